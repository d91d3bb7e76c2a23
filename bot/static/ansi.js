"use strict";
// Terminal output into a DOM element: ANSI SGR colours (30-37, 90-97), bold and reset become
// spans with classes, every other escape sequence is dropped. Text only ever goes in as text nodes.
const SpeedAnsi = (() => {
  const NAMES = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];
  // CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), or a two-character escape.
  const SEQUENCE = /\x1b(?:\[([0-9;:?<=>]*)[ -\/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -\/]*[0-Z\\^-~])/y;
  // What a sequence cut off at the end of a chunk looks like; the next chunk completes it.
  const UNFINISHED = /^\x1b(?:\[[0-9;:?<=>]*[ -\/]*|\][^\x07\x1b]*\x1b?|[ -\/]*)$/;
  const CONTROL = /[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]/g;
  const MAX_CARRY = 256;

  function renderer(target) {
    let colour = null, bold = false, carry = "";

    function sgr(params) {
      const codes = params === "" ? [0] : params.split(/[;:]/).map(Number);
      for (let i = 0; i < codes.length; i++) {
        const code = codes[i];
        if (code === 0) { colour = null; bold = false; }
        else if (code === 1) bold = true;
        else if (code === 22) bold = false;
        else if (code === 39) colour = null;
        else if (code >= 30 && code <= 37) colour = NAMES[code - 30];
        else if (code >= 90 && code <= 97) colour = "bright-" + NAMES[code - 90];
        // 38/48 take arguments (5;n or 2;r;g;b) that must not be read as codes of their own.
        else if (code === 38 || code === 48) i += { 5: 2, 2: 4 }[codes[i + 1]] || 0;
      }
    }

    function emit(text) {
      text = text.replace(CONTROL, "");
      if (!text) return;
      if (!colour && !bold) {
        target.appendChild(document.createTextNode(text));
        return;
      }
      const span = document.createElement("span");
      if (colour) span.classList.add("ansi-" + colour);
      if (bold) span.classList.add("ansi-bold");
      span.textContent = text;
      target.appendChild(span);
    }

    function write(chunk) {
      let text = carry + chunk;
      carry = "";
      // A CR at the end may be the first half of a CRLF; lone CRs become line breaks, as in HTML.
      if (text.endsWith("\r")) { carry = "\r"; text = text.slice(0, -1); }
      text = text.replace(/\r\n?/g, "\n");
      let at = 0;
      while (at < text.length) {
        const esc = text.indexOf("\x1b", at);
        if (esc < 0) { emit(text.slice(at)); break; }
        emit(text.slice(at, esc));
        SEQUENCE.lastIndex = esc;
        const match = SEQUENCE.exec(text);
        if (match) {
          if (match[2] === "m") sgr(match[1]);
          at = SEQUENCE.lastIndex;
        } else if (text.length - esc <= MAX_CARRY && UNFINISHED.test(text.slice(esc))) {
          carry = text.slice(esc) + carry;
          break;
        } else {
          at = esc + 1;  // a lone ESC
        }
      }
    }

    return { write };
  }

  return { renderer };
})();
