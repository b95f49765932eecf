"""The Progressive GAN of facebookresearch/pytorch_GAN_zoo on CelebA-HQ 256x256: the architecture of its
published checkpoint, to import it and sample faces (or fine-tune).

    zoo import --from pytorch celebaHQ_s6_i80000-6196db68.pth --layout gan_zoo_pgan \
        --config experiments/karras2017/pgan_celebahq_gan_zoo.py --workdir runs/pgan_celebahq
    zoo sample --workdir runs/pgan_celebahq --num 16 --out faces.png

The file is the one their ``hubconf.py`` names for ``PGAN(pretrained=True, model_name="celebAHQ-256")``
(https://dl.fbaipublicfiles.com/gan_zoo/PGAN/celebaHQ_s6_i80000-6196db68.pth); the import needs neither
the data set nor a network connection (``data.image_shape`` gives the shape). Variant ``512``: their
``celebAHQ-512`` file (celebaHQ16_december_s7_i96000-9c72988c.pth), one level more.

Architecture (pytorch_GAN_zoo's ``pgan_config.py`` defaults, which their CelebA-HQ set-up keeps): a 512-d
N(0, I) latent, channels 512, 512, 512, 512, 256, 128, 64 (and 32 at 512x512) at 4x4 ... 256x256, RGB
in [-1, 1], no output activation; the same equalized learning rate, pixel norm and nearest-neighbour
upsampling as ours, so our generator computes theirs exactly (:mod:`zoo.interop.layouts`). Training
settings are the paper's as they use them (WGAN-GP, lambda 10, drift 0.001, Adam 1e-3 with betas (0,
0.99), batch 16, EMA 0.999; 96,000 steps a level, the first 19,200 of them the fade (600 jumps of 32);
their 4x4 level is shorter, 48,000, ours 76,800), for fine-tuning; training needs CelebA-HQ prepared for TFDS
(``celeb_a_hq/256``, a manual download). Their discriminator is not imported (see the layout): a
fine-tuning run's discriminator starts fresh.
"""
import ml_collections

_FEATURES = (512, 512, 512, 512, 256, 128, 64, 32)


def get_config(variant=None):
  if variant not in (None, "512"):
    raise ValueError(f"unknown variant {variant!r}; known: 512")
  levels = 8 if variant == "512" else 7
  size = 4 * 2 ** (levels - 1)
  c = ml_collections.ConfigDict()
  c.family = "progan"
  c.seed = 0
  c.batch_size = 16
  c.steps = 76_800 + 96_000 * (levels - 1)
  c.log_every = 500
  c.eval_every = 0
  c.checkpoint_every = 5_000
  c.keep_checkpoints = 3
  c.num_samples = 16
  c.ema = {"generator": 0.999}
  c.data = ml_collections.ConfigDict({"name": f"celeb_a_hq/{size}", "image_shape": (size, size, 3)})
  c.model = ml_collections.ConfigDict(dict(
      latent_dim=512, latent_dist="normal", objective="wgan_gp", n_critic=1, gp_weight=10.0,
      drift_weight=0.001, features=_FEATURES[:levels], fade_steps=19_200, stable_steps=76_800,
      mbstd_group=4))
  adam = dict(name="adam", lr=1e-3, b1=0.0, b2=0.99, eps=1e-8)
  c.optim = ml_collections.ConfigDict({"discriminator": dict(adam), "generator": dict(adam)})
  return c
