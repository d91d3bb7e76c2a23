"""A cgroup for each build, so the processes of its RUN steps are limited as a container's are.

Docker's build API limits each step's memory and CPU, but has no process limit; a step's
container is created under the cgroup parent the build names, and a parent's pids.max holds
for everything below it. Only with the cgroupfs driver, where parents are plain directories."""
import glob
import logging
import os
import secrets
import time

log = logging.getLogger(__name__)

ROOT = "/sys/fs/cgroup"
# A cgroup is busy until the engine has removed the containers in it.
REMOVE_TRIES = 20
REMOVE_PAUSE = 0.1


class BuildCgroups:
    """Makes and removes the cgroup parents of one SPEED's builds."""

    def __init__(self, pids_root: str, prefix: str, root: str = ROOT):
        self._pids_root = pids_root  # the directory holding pids.max files
        self._prefix = prefix
        self._root = root

    @classmethod
    def for_engine(cls, engine: dict, prefix: str, root: str = ROOT) -> "BuildCgroups | None":
        """Build cgroups for an engine as `docker info` describes it, or None (with the
        reason logged) where SPEED cannot make them: another driver, or no write access."""
        if engine.get("CgroupDriver") != "cgroupfs":
            why = f"the engine's cgroup driver is {engine.get('CgroupDriver')!r}, not cgroupfs"
        else:
            # cgroup v1 has a hierarchy per controller; v2 one for all.
            v1 = str(engine.get("CgroupVersion", "1")) == "1"
            pids_root = os.path.join(root, "pids") if v1 else root
            if os.access(os.path.join(pids_root, "cgroup.procs"), os.W_OK):
                return cls(pids_root, prefix, root)
            why = f"{pids_root} is not writable by SPEED"
        log.warning("builds run without a process limit: %s (containers have one)", why)
        return None

    def create(self, pids: int) -> str | None:
        """A new cgroup allowing pids processes in all: its path for the engine, or None if
        it could not be made (the build then runs without a process limit, logged)."""
        name = f"{self._prefix}-{secrets.token_hex(6)}"
        path = os.path.join(self._pids_root, name)
        try:
            os.mkdir(path, 0o755)
            with open(os.path.join(path, "pids.max"), "w") as f:
                f.write(str(pids))
        except OSError as e:
            log.warning("a build runs without a process limit: cannot make cgroup %s: %s",
                        path, e.strerror)
            self._rmdir(path)
            return None
        return "/" + name

    def remove(self, parent: str) -> None:
        """Remove a build's cgroup from every hierarchy the engine made it in, once empty."""
        name = parent.strip("/")
        for _ in range(REMOVE_TRIES):
            left = [path for path in self._copies(name) if not self._rmdir(path)]
            if not left:
                return
            time.sleep(REMOVE_PAUSE)
        log.warning("cgroup %s is still busy; the next start removes it", name)

    def sweep(self) -> None:
        """Remove the empty build cgroups an earlier process of this SPEED left behind."""
        for path in glob.glob(os.path.join(glob.escape(self._pids_root),
                                           glob.escape(self._prefix) + "-*")):
            for copy in self._copies(os.path.basename(path)):
                self._rmdir(copy)

    def _copies(self, name: str) -> list[str]:
        """The cgroup's directory in each hierarchy (v1 has one per controller)."""
        return [path for path in {os.path.join(self._pids_root, name),
                                  *glob.glob(os.path.join(glob.escape(self._root), "*",
                                                          glob.escape(name)))}
                if os.path.isdir(path)]

    @staticmethod
    def _rmdir(path: str) -> bool:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return True
