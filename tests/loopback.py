"""One HTTP client for the tests' own calls to the emulators' test hooks (``/emulator/...``).

``httpx.get()`` and its siblings build a client, and with it an SSL context (tens of
milliseconds of loading CA certificates), on every call, even to plain HTTP on loopback;
the fixtures make such calls around every test.
"""

from __future__ import annotations

import httpx

http = httpx.Client()
