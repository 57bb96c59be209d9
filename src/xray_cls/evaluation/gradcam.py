"""Grad-CAM maps of a classifier's ``net.cam_layer`` (captum), and overlays of them on the input images."""

from __future__ import annotations

import matplotlib
import torch
import torch.nn.functional as F
from torch import nn

from xray_cls.models.backbones import tokens_to_feature_map


def gradcam(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | int) -> torch.Tensor:
    """Grad-CAM of ``model.net.cam_layer`` for class ``targets`` (one per image, or one for all).

    ``model`` takes float images ``[B, C, H, W]`` in [0, 1] (a ClassificationModule: it normalises).
    Returns maps ``[B, 1, H, W]`` with the input's spatial size, each divided by its maximum, so in [0, 1]
    (all zeros where nothing in the image raised the class score). Layers whose output is a token sequence
    ``[B, 1 + N, D]`` (ViT) are reshaped to a patch grid first.
    """
    # captum is imported here, not with this module: training imports the report code, Grad-CAM runs after it.
    from captum.attr import LayerActivation, LayerAttribution, LayerGradCam

    layer = model.net.cam_layer
    device = next(model.parameters()).device
    # Images collected under torch.inference_mode cannot enter autograd: clone them outside it.
    with torch.inference_mode(False), torch.enable_grad():
        images = images.to(device).float().clone()
        targets = torch.as_tensor(targets, device=device).long().expand(len(images))
        was_training = model.training
        model.eval()
        try:
            if LayerActivation(model, layer).attribute(images[:1]).ndim == 3:
                maps = _token_gradcam(model, layer, images, targets)
            else:
                maps = LayerGradCam(model, layer).attribute(images, target=targets, relu_attributions=True)
        finally:
            model.train(was_training)
        maps = LayerAttribution.interpolate(maps.detach(), tuple(images.shape[-2:]), "bilinear")
    return _unit_range(maps.float())


def _token_gradcam(
    model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    # LayerGradCam would average over the embedding and sum over tokens; Grad-CAM needs the reverse, on
    # the patch grid: weights = gradients averaged over patches, map = weighted sum over channels.
    from captum.attr import LayerActivation, LayerGradientXActivation

    activations = tokens_to_feature_map(LayerActivation(model, layer).attribute(images))
    gradients = LayerGradientXActivation(model, layer, multiply_by_inputs=False).attribute(
        images, target=targets
    )
    gradients = tokens_to_feature_map(gradients)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * activations).sum(dim=1, keepdim=True))


def _unit_range(maps: torch.Tensor) -> torch.Tensor:
    # Divided by each map's maximum, not min-max stretched: a uniform map (a 1x1 feature map, say) stays
    # uniform instead of turning float noise into contrast. After the ReLU every value is >= 0.
    maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    peak = maps.flatten(1).max(1).values.view(-1, 1, 1, 1)
    return torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), 0.0).clamp(0, 1)


def overlay(images: torch.Tensor, maps: torch.Tensor, alpha: float = 0.45) -> torch.Tensor:
    """``images`` ``[B, C, H, W]`` in [0, 1] (gray or RGB) under ``maps`` ``[B, 1, H, W]`` drawn in the
    ``jet`` colour map: RGB ``[B, 3, H, W]`` in [0, 1]."""
    images = images.detach().float().cpu()
    rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]
    heat = matplotlib.colormaps["jet"](maps.detach().cpu()[:, 0].numpy())[..., :3]
    heat = torch.from_numpy(heat).permute(0, 3, 1, 2).float()
    return ((1 - alpha) * rgb + alpha * heat).clamp(0, 1)
