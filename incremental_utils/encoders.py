"""The camera encoder of the pixel scripts (avg.py, stream_ac.py): images to features, the same network for both
(SPEC.md 10, the one in the authors' visual Stream AC), written once. A script's networks read it through
network_input(); camera_encoders() builds one (shared by actor and critic, trained by the critic) or one each."""
import torch
import torch.nn as nn


class PixelEncoder(nn.Module):
    """Images to 128 features (SPEC.md 10, the authors' visual Stream AC encoder): pixels / 255, three 3x3 convolutions
    of stride 2 (32, 64, 64 channels, ReLU between), then a spatial softmax: each channel's expected (x, y) on a [-1, 1]
    grid. With `pad` > 0 it sees a crop `pad` smaller each side: at the shift (--augment shift), else the centre."""

    def __init__(self, image_shape, pad=0):
        super().__init__()
        channels, height, width = image_shape
        self.pad, self.size, self.features = pad, (height - 2 * pad, width - 2 * pad), 2 * 64
        # The last convolution has no bias: a constant per channel cancels in the softmax (its gradient: rounding noise)
        self.convs = nn.Sequential(nn.Conv2d(channels, 32, 3, stride=2), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2),
                                   nn.ReLU(), nn.Conv2d(64, 64, 3, stride=2, bias=False))
        h, w = self.convs(torch.zeros(1, channels, *self.size)).shape[-2:]
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.flatten(), ys.flatten()], -1))  # (h * w, 2), x along the width

    def forward(self, image, shift=None):
        (h, w), pad, batch = self.size, self.pad, image.dim() == 4
        image = image[..., pad:pad + h, pad:pad + w] if shift is None else (  # a gather: the offset is an input
            image.index_select(-2, shift[0] + torch.arange(h)).index_select(-1, shift[1] + torch.arange(w)))
        maps = self.convs(image.float() / 255 if batch else image.float().unsqueeze(0) / 255)
        keypoints = (maps.flatten(-2).softmax(-1) @ self.grid).flatten(-2)  # each channel's expected x and y
        return keypoints if batch else keypoints.squeeze(0)


def network_input(encoder, obs, augment=False):
    """What a trunk reads: the observation itself, or for images the encoder's features beside the proprioception."""
    return obs if encoder is None else torch.cat([encoder(obs.image, obs.shift if augment else None), obs.vector], -1)


def camera_encoders(image_shape, args):
    """(augment, pad, [critic's encoder, actor's own encoder or None], shared): for --pixels or a camera's images
    (image_shape (C, H, W)), else no encoders. --augment shift crops each update's S at a random offset of up to 2%
    of the side; --shared-encoder (the default) gives the actor the critic's encoder, read without a gradient."""
    if image_shape is None:
        return False, 0, [None, None], None
    augment = args.augment == "shift"
    pad = round(0.02 * image_shape[-1]) if augment else 0
    critic = PixelEncoder(image_shape, pad)
    if args.shared_encoder:
        return augment, pad, [critic, None], critic
    return augment, pad, [critic, PixelEncoder(image_shape, pad)], None
