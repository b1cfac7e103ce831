"""Model code: SAM (ViT encoder, prompt encoder, mask decoder), the UNETR decoder, checkpoints."""

from .checkpoint import Checkpoint, CheckpointError, read_checkpoint, write_model_and_decoder, write_released
from .sam import PRESETS, Sam, SamConfig, build_sam, config_from_state_dict, with_input_size
from .unetr import UNETRDecoder

__all__ = [
    "Checkpoint", "CheckpointError", "read_checkpoint", "write_model_and_decoder", "write_released",
    "PRESETS", "Sam", "SamConfig", "build_sam", "config_from_state_dict", "with_input_size", "UNETRDecoder",
]
