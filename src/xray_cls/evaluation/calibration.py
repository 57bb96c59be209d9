"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): one scalar T,
fitted on validation data, divides the logits so that softmax gives probabilities that mean what they say.

T > 1 softens over-confident scores, T < 1 sharpens timid ones. Dividing by a positive number keeps every
ranking: AUROC, and which validation images a threshold separates, do not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Where validation separates the classes perfectly, the likelihood keeps growing as T shrinks; the bounds
# keep T finite (and scores from collapsing to 0 and 1).
TEMPERATURE_BOUNDS = (0.05, 20.0)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T in :data:`TEMPERATURE_BOUNDS` that minimises the cross-entropy of ``softmax(logits / T)``
    against ``targets`` (class indices), by L-BFGS on log T, as the paper's reference code does."""
    # Validation hooks run in inference mode (trainer.validate) or without gradients: the fit needs both.
    with torch.inference_mode(False), torch.enable_grad():
        logits, targets = logits.detach().double().cpu().clone(), targets.detach().long().cpu().clone()
        log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        low, high = (torch.tensor(b, dtype=torch.float64).log() for b in TEMPERATURE_BOUNDS)
        optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

        def nll() -> torch.Tensor:
            optimizer.zero_grad()
            with torch.enable_grad():  # optimizer.step itself runs without gradients
                loss = F.cross_entropy(logits / log_t.clamp(low, high).exp(), targets)
                loss.backward()
            return loss

        optimizer.step(nll)
        return float(log_t.detach().clamp(low, high).exp())
