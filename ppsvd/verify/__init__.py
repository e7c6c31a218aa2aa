"""`ppsvd verify`: prove the exactness contract and measure the speed on this machine, against
diffusers' own StableVideoDiffusionPipeline in the same process.

- bounds.py: the contract: bitwise, or the documented bound of the guidance split and --compile
- layouts.py: the layouts to check (--layouts specs, this machine's defaults) and their configs
- settings.py: the short defaults both sides run
- reference.py: diffusers' pipeline in this process: every sample's latents, frames and time
- check.py: runs the reference and each layout, compares, and reports (VerifyReport)

Importing this package imports no torch; check.verify does.
"""
