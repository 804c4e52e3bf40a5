"""The paper notebooks' spectrogram input, re-implemented: librosa STFT → dB → a matplotlib
plot saved as PNG → read back with OpenCV → resized and normalised for the CNN. One clip at a
time, through the file system, as the notebooks made the pictures they fed to EfficientNet.
"""

import os

import cv2
import librosa
import librosa.display
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def notebook_spectrogram_image(waveform, sampling_rate, png_path, image_size=224):
    """`[3, image_size, image_size]` float32 from one clip, via a rendered PNG."""
    db = librosa.amplitude_to_db(np.abs(librosa.stft(waveform)), ref=np.max)
    fig, ax = plt.subplots()
    librosa.display.specshow(db, sr=sampling_rate, x_axis="time", y_axis="log", ax=ax)
    fig.savefig(png_path)
    plt.close(fig)
    picture = cv2.imread(png_path)  # BGR uint8
    os.remove(png_path)
    picture = cv2.cvtColor(cv2.resize(picture, (image_size, image_size)), cv2.COLOR_BGR2RGB)
    picture = (picture.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return picture.transpose(2, 0, 1)
