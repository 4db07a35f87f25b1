"""A stand-in for the task-vectors release's `src.modeling`, so its pickled checkpoints
(zeroshot.pt, <Task>/finetuned.pt, head_<Task>.pt: whole modules saved with torch.save) can be
unpickled without that repository on the path.

Unpickling restores an object's attributes without calling __init__, so these classes only need
the names and base classes of the originals: ImageEncoder holds an open_clip CLIP model in
`.model`, ClassificationHead is a Linear layer whose weight already carries CLIP's logit scale
(and whose inputs are L2-normalised when `normalize` is set). Only their tensors are used: the
fetch stage converts them to safetensors once.
"""
from __future__ import annotations

import torch


class ImageEncoder(torch.nn.Module):
    def forward(self, images):
        return self.model.encode_image(images)


class ClassificationHead(torch.nn.Linear):
    def forward(self, inputs):
        if getattr(self, "normalize", False):
            inputs = inputs / inputs.norm(dim=-1, keepdim=True)
        return super().forward(inputs)


class ImageClassifier(torch.nn.Module):
    def forward(self, inputs):
        return self.classification_head(self.image_encoder(inputs))


class MultiHeadImageClassifier(torch.nn.Module):
    def forward(self, inputs, head_idx):
        return self.classification_heads[head_idx](self.image_encoder(inputs))
