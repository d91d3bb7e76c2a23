"""The aiohttp application: everything that speaks HTTP."""
