"""RBM with 500 hidden units trained by CD-1 on binarized MNIST; test log-likelihood by AIS.

Paper: Salakhutdinov & Murray 2008, "On the Quantitative Analysis of Deep Belief Networks" (ICML). Held
against its CD1(500) RBM: test log-probability about -125.5 nats, estimated with AIS (100 runs, 14,500 inverse
temperatures, base-rate initial distribution). Data: the fixed binarization of MNIST (Larochelle &
Murray 2011); its 50,000 train and 10,000 valid images split MNIST's 60,000 training images, on which
the paper trained. We train on the 50,000 and select the checkpoint on the 10,000.

Training follows Hinton's practical guide (UTML TR 2010-003) and the numbers of the Hinton &
Salakhutdinov 2006 RBM code: weights from N(0, 0.01^2), batches of 100, rate 0.1 with momentum 0.9
(warmed up over the first 5 epochs in place of the guide's momentum switch from 0.5 to 0.9, which the
optimizer config cannot express), weight cost 2e-4 inside the momentum, i.e. 2e-3 decoupled here (on the
weights only, not the biases, as in the guide), and the rate decaying linearly to 0 over 100 epochs (our choice).

Command (2-core CPU shared with another job: about 15 min to train, evaluations included, with CD-1 at
106 steps/s at batch 100; the final AIS, 100 chains x 14,500 temperatures, about 1 min):
  zoo train --config experiments/salakhutdinov2008/rbm_cd1.py --workdir runs/salakhutdinov2008_rbm_cd1
  zoo eval --workdir runs/salakhutdinov2008_rbm_cd1 --split test --k 100 --best
``--k 100`` runs 100 AIS chains over ``model.final_ais_temperatures`` = 14,500 temperatures (the paper's
protocol); evaluations during training use 100 chains x 5,000 temperatures. Variant ``quick``: 300 steps,
seconds on 2 CPU cores; its AIS (16 chains x 500 temperatures during training, 3,000 with ``--k``) is a
smoke figure: too few temperatures bias log Z low, so the NLL comes out optimistic, by tens of nats on
these barely trained models (measured: 16 x 500 vs 100 x 14,500 differ by about 20 nats).
"""
from zoo.config import sibling

REFERENCE = dict(paper="Salakhutdinov & Murray 2008 (CD1(500) RBM)", data="binarized MNIST (fixed)",
                 metric="test NLL, nats (AIS, 100 x 14,500)", key="nll", value=125.5)


def get_config(variant=None):
  return sibling(__file__, "_rbm.py").rbm_config(cd_k=1, variant=variant)
