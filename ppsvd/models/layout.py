"""The files of a diffusers-format SVD repository that a run loads (no torch: doctor uses it too).

Weights may be the full-precision files or their fp16 variants (model.fp16.safetensors).
"""

CONFIG_FILES = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "image_encoder": "image_encoder/config.json",
    "feature_extractor": "feature_extractor/preprocessor_config.json",
    "scheduler": "scheduler/scheduler_config.json",
}
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin")
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
WEIGHT_FILES = {"unet": _DIFFUSERS_WEIGHTS, "vae": _DIFFUSERS_WEIGHTS, "image_encoder": _TRANSFORMERS_WEIGHTS}
COMPONENTS = tuple(CONFIG_FILES)


def predownload_command(model: str, hub_cli: str = "hf") -> str:
    """Fetches the diffusers-format folders (fp32 and fp16) and skips the single-file checkpoints (svd*.safetensors)."""
    return f'{hub_cli} download {model} --exclude "svd*"'
