"""CLIP backbone of Res²CLIP: V-V attention, layer taps, any input size, prompt ensembles.

- :class:`ClipBackbone`: a frozen open_clip ViT read block by block (Res²CLIP sec. 4.1), built
  by :meth:`ClipBackbone.from_pretrained` (open_clip tag or local checkpoint file) or
  :meth:`ClipBackbone.tiny` (random weights, for tests);
- :func:`vv_attention`, :func:`dual_attention`: V-V attention over a pretrained
  attention layer, reusable by other methods;
- :func:`interpolate_pos_embed`: positional-embedding resize (bilinear, as the official code);
- :func:`convert_to_safetensors`: a checkpoint (OpenAI's TorchScript ``.pt``) to a
  ``.safetensors`` file, without running code from it;
- :class:`ImagePreprocess`: the image preprocessing matching the weights;
- :class:`ImageBackbone`: a backbone whose features are the preprocessed images, for a
  method that reads the model itself (FineGrainedAD) through the engine's feature cache;
- :func:`build_prompts`, :func:`encode_prompt_ensemble`: the paper's prompt
  ensemble, text anchors and text residual (App. B, eqs. 3, 32).
"""

from resad_kit.clip.attention import dual_attention, vv_attention
from resad_kit.clip.backbone import ClipBackbone, Features
from resad_kit.clip.checkpoints import WeightsNotFoundError
from resad_kit.clip.config import BackboneConfig
from resad_kit.clip.conversion import convert_to_safetensors
from resad_kit.clip.image_backbone import ImageBackbone
from resad_kit.clip.learnable_prompts import LearnablePrompts
from resad_kit.clip.positional import interpolate_pos_embed
from resad_kit.clip.preprocess import ImagePreprocess
from resad_kit.clip.prompts import TextAnchors, build_prompts, encode_prompt_ensemble

__all__ = [
    "BackboneConfig",
    "ClipBackbone",
    "Features",
    "ImageBackbone",
    "ImagePreprocess",
    "LearnablePrompts",
    "TextAnchors",
    "WeightsNotFoundError",
    "build_prompts",
    "convert_to_safetensors",
    "dual_attention",
    "encode_prompt_ensemble",
    "interpolate_pos_embed",
    "vv_attention",
]
