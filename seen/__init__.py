"""seen: measure (SEE) and remove (SEEN) noise inside audio-language models.

The shared core used by both the offline calibration (``calibration``) and the online service
(``service``): the SEE maths (:mod:`seen.see`), noise-basis construction (:mod:`seen.basis`),
layer patching (:mod:`seen.hooks`, :mod:`seen.patch`), the bundle format (:mod:`seen.bundle`),
model adapters (:mod:`seen.adapters`), audio decoding and noise tools.
"""

__version__ = "0.1.0"
