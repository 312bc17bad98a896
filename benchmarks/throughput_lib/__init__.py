"""The parts of benchmarks/throughput.py: what it times, how, and how it reports.

- `models`: the subjects timed (PEP variants, the backbone + FPN alone, torchvision's Mask R-CNN,
  the matched comparison's pairs) and the names of the comparison's models;
- `batches`: the images and targets every subject is fed;
- `timing`: the timers (images/s, interleaved per-image ms), what one training step is, the
  measurements of a demo model or a matched pair, and the CPU others took meanwhile;
- `report`: the JSON summary, the text tables, the busy-machine warning and the progress log.

The script imports them through its own folder (it puts that folder on sys.path when it is
loaded by file path, as the tests do).
"""
