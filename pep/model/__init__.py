"""The PEP model, one file per box of the paper's Fig. 2:

- backbone.py   feature extractor (ResNet + FPN)
- perceive.py   semantics perceiving: class map, descriptor map, original descriptors
- excavate.py   object excavating: centres of other instances nearby, mined descriptors
- purify.py     instance purifying: descriptor similarity, merge at inference
- mask.py       mask learning: general feature, descriptors as dynamic kernels, dice loss
- detector.py   the whole, for any of the four ablation variants (`build_model`)
- scopes.py     the boxes' names for profilers (where a step spends its time)
"""

from pep.model.detector import PEP, build_model

__all__ = ["PEP", "build_model"]
