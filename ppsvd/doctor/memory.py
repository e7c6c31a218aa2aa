"""Doctor's memory model: it lives in ppsvd.models.memory, so the run's preflight (which may not
import doctor) refuses the same shapes doctor flags. Re-exported here for doctor's checks."""

from ppsvd.models.memory import *  # noqa: F401,F403
from ppsvd.models.memory import (  # noqa: F401  (names the star does not carry)
    CFG,
    DECODE_ACT,
    DTYPE_BYTES,
    ENCODE_ACT,
    GIB,
    OVERHEAD_CPU,
    OVERHEAD_CUDA,
    REF_POSITIONS,
    REF_STEP_S,
    SVD_PARAMS,
    TINY_PARAMS,
    UNET_ACT,
    StageMemory,
    estimate_stages,
    estimated_step_s,
    fits,
    largest_decode_chunk,
    largest_fitting_shape,
    model_family,
    per_device_need,
    positions,
)
