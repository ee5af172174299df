"""Online serving: the HTTP API that applies SEEN to every request and reports SEE.

Built on :mod:`seen` (adapters, :class:`seen.patch.SeenPatch`, the bundle format); nothing in
:mod:`seen` or :mod:`calibration` imports from here.
"""
