"""Generators and discriminators: plain single-device PyTorch modules (they import torch only).

Every G is called as G(z, c) and every D as D(x, c), with c the int64 class labels of a
class-conditional model (model.num_classes > 0) or None.

    build.py       the one builder from the model config (build_nets, build_generator)
    dcgan.py       DCGAN (the seed recipe)
    resnet.py      SNGAN/BigGAN-style ResNet, conditional BatchNorm and a projection head
    stylegan2.py   a compact StyleGAN2
    layers.py      layers the architectures share
"""

from gandist.models.build import ARCHS, build_generator, build_models, build_nets
from gandist.models.dcgan import Discriminator, Generator
from gandist.models.resnet import ResNetDiscriminator, ResNetGenerator
from gandist.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator

__all__ = [
    "ARCHS",
    "Discriminator",
    "Generator",
    "ResNetDiscriminator",
    "ResNetGenerator",
    "StyleGAN2Discriminator",
    "StyleGAN2Generator",
    "build_generator",
    "build_models",
    "build_nets",
]
