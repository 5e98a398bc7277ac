"""Support code of the MedFound Slicer module: worker jobs, dependency installer, node <-> Volume conversion."""
