"""The DCGAN of facebookresearch/pytorch_GAN_zoo (64x64 RGB): the architecture of its published
fashionGen checkpoint, to import it and sample (or fine-tune).

    zoo import --from pytorch DCGAN_fashionGen-1d67302.pth --layout gan_zoo_dcgan \
        --config experiments/radford2015/dcgan_gan_zoo.py --workdir runs/dcgan_fashiongen
    zoo sample --workdir runs/dcgan_fashiongen --num 64 --out clothes.png

The file is the one their ``hubconf.py`` names for ``DCGAN(pretrained=True)``
(https://dl.fbaipublicfiles.com/gan_zoo/DCGAN_fashionGen-1d67302.pth). The import needs no data
(``data.image_shape`` gives the shape); fine-tuning reads the images of ``data.name`` (a folder of
64x64 images here; set ``--config.data.name``).

Architecture (their ``DCGAN.py`` defaults: latent 64, dimG = dimD = 64, depth 3): G projects a N(0, I)
latent to 4x4x512 (their ``formatLayer``, a 4x4 transposed convolution of the 1x1 latent: our dense
projection), then 4x4 stride-2 transposed convolutions to 256, 128, 64 channels with batch norm and ReLU
and one to 3 channels with tanh; D mirrors it (4x4 stride-2 convolutions to 64, 128, 256, 512 with batch
norm after all but the first, LeakyReLU 0.2, a 4x4 convolution to one logit). Their layers have no
biases; ours that do (G's last, D's first and last) import as zero. Training settings for fine-tuning
are theirs: the non-saturating loss, Adam 2e-4 with beta1 0.5, batch 16.
"""
import ml_collections


def get_config(variant=None):
  if variant:
    raise ValueError(f"unknown variant {variant!r}; this config has none")
  c = ml_collections.ConfigDict()
  c.family = "dcgan"
  c.seed = 0
  c.batch_size = 16
  c.steps = 100_000
  c.log_every = 500
  c.eval_every = 0
  c.checkpoint_every = 5_000
  c.keep_checkpoints = 3
  c.num_samples = 64
  c.data = ml_collections.ConfigDict({"name": "folder:data/fashiongen_64", "image_shape": (64, 64, 3)})
  c.model = ml_collections.ConfigDict(dict(
      latent_dim=64, latent_dist="normal", objective="non_saturating", n_critic=1,
      g_features=(512, 256, 128, 64), d_features=(64, 128, 256, 512), kernel_size=4, init_std=0.02,
      bn_momentum=0.9))
  adam = dict(name="adam", lr=2e-4, b1=0.5, b2=0.999)
  c.optim = ml_collections.ConfigDict({"discriminator": dict(adam), "generator": dict(adam)})
  return c
