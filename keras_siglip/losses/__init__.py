"""Contrastive losses: SigLIP's sigmoid loss and the CLIP softmax baseline."""

from keras_siglip.losses.sigmoid import SigmoidLoss, sigmoid_loss
from keras_siglip.losses.softmax import SoftmaxLoss, softmax_loss

__all__ = ["SigmoidLoss", "SoftmaxLoss", "sigmoid_loss", "softmax_loss"]
