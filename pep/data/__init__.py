"""Data: the synthetic set, COCO 2017 download, COCO-format reading, data-set validation and the data report."""
