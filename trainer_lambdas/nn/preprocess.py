"""Images to network inputs, the same way for training and for prediction."""

import numpy as np


def flatten_images(images: np.ndarray) -> np.ndarray:
    """(m, h, w, c) uint8 pixels -> (h*w*c, m) float64 columns in [0, 1].

    Each image is flattened in C order (row, column, channel) into one column.
    """
    m = images.shape[0]
    return images.reshape(m, -1).T.astype(np.float64) / 255.0
