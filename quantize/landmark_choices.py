"""The hand landmark guard's default limits, shared by the calibrate command line and the calibration code
(importable without LiteRT or the quantizer).

Judged on the tune photos. 1.0 % of the hand box's long side is about 1 px on a 100 px hand in
hagrid512-mini: a fifth of what separates MediaPipe's own lite and full models (4.9 %). With all
layers int8 the lite model missed it (1.16 % on tune, 1.47 % on the report photos); 1.5 % would have
passed that model on tune with no margin for the report photos. Presence decides whether a hand is
kept (threshold 0.5): a mean difference of 0.02 is 7 flips in about 600 hands.
"""

DEFAULT_MAX_POINT_ERROR = 1.0  # mean INT8-vs-FP32 point distance, % of the hand box's long side
DEFAULT_MAX_PRESENCE_DIFF = 0.02  # mean |INT8 - FP32| presence score
