"""ppsvd: pipeline-parallel Stable Video Diffusion.

Importing ppsvd must stay cheap: no torch, no diffusers here.
"""

__version__ = "0.1.0"
