"""Data: the synthetic set, COCO-format reading, and data-set validation."""
