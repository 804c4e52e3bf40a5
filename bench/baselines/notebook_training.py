"""The paper notebooks' training of the fusion head, re-implemented as they ran it (the baseline).

One process; the cached features held as per-row numpy arrays in a torch Dataset that turns each
row into tensors when it is read; the default collate; batch 32, shuffled; Adam at lr 5e-6 with
StepLR(100, 0.4) stepped once an epoch; the loss is the symmetric cross-entropy on cosine x 0.07
(ClaspConfig loss="contrastive_fixed"), its value read back every step for the running loss; after
each epoch the validation loss, for early stopping. The head is CLASP's own (a ClaspModel's
fusion, called through the model's forward): the notebooks trained the same head, so what this
measures is the way of training, not a different network.
"""

import time

import torch
from torch.utils.data import DataLoader, Dataset


class NotebookFeatures(Dataset):
    """(speech, spectrogram, text) feature rows, one numpy array each, made tensors on access."""

    def __init__(self, speech, spectrogram, text):
        self.rows = list(zip(speech, spectrogram, text))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        speech, spectrogram, text = self.rows[index]
        return torch.tensor(speech), torch.tensor(spectrogram), torch.tensor(text)


def notebook_train(model, train, validation, epochs: int, batch_size: int = 32, learning_rate: float = 5e-6) -> dict:
    """Train `model` (a ClaspModel whose config has loss="contrastive_fixed") on `train` and
    `validation`, each a (speech, spectrogram, text) triple of [rows, dim] arrays.

    Returns the seconds it took (training and the per-epoch validation) and the rows trained on.
    """
    loader = DataLoader(NotebookFeatures(*train), batch_size=batch_size, shuffle=True)
    val_loader = DataLoader(NotebookFeatures(*validation), batch_size=batch_size)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.4)
    started, samples = time.perf_counter(), 0
    for _ in range(epochs):
        model.train()
        running_loss = 0.0
        for speech, spectrogram, text in loader:
            optimizer.zero_grad()
            loss = model(speech_embeds=speech, spectrogram_embeds=spectrogram, text_embeds=text, return_loss=True).loss
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            samples += len(speech)
        scheduler.step()
        model.eval()
        val_loss = 0.0
        with torch.no_grad():
            for speech, spectrogram, text in val_loader:
                val_loss += model(speech_embeds=speech, spectrogram_embeds=spectrogram, text_embeds=text,
                                  return_loss=True).loss.item()
    return {"seconds": time.perf_counter() - started, "samples": samples}
