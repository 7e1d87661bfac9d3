"""The class id that marks a pixel without a label, shared by every layer.

Point-label maps hold it everywhere but at the points, label maps are padded with it,
and the losses, the online extension and the metrics skip it (PyTorch's cross-entropy
calls it ``ignore_index``). 255 fits an 8-bit label PNG and lies above every class id
of the datasets here. This module imports nothing, so data, losses, extension, metrics
and the engine all take the value from here.
"""

IGNORE_INDEX = 255
