"""Convert an InVesalius project (``.inv3``: a tar.gz holding ``main.plist`` + raw ``matrix.dat``) to NIfTI.

Debian's ``invesalius-examples`` ships a real head CT only in this form
(/usr/share/doc/invesalius-examples/examples/Cranium.inv3); pretraining reads NIfTI/NRRD/DICOM, so
``training/pretrain_shipped.sh`` converts it once into the work folder. The project stores no
patient position: the origin is 0 and the axes are taken as the identity (LPS), which is fine for
self-supervised crops.

    python training/tools/inv3_to_nifti.py Cranium.inv3 cranium.nii.gz
"""

from __future__ import annotations

import plistlib
import sys
import tarfile
from pathlib import Path

import numpy as np

from medfoundcore.errors import InputError
from medfoundcore.io import Volume, save_volume


def read_inv3(path: Path) -> Volume:
    """The CT volume of an InVesalius project, HU as int16, spacing from the project."""
    with tarfile.open(path, "r:gz") as archive:
        members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
        if "main.plist" not in members:
            raise InputError(f"{path}: not an InVesalius project (no main.plist inside)")
        main = plistlib.loads(archive.extractfile(members["main.plist"]).read())
        matrix = main["matrix"]
        raw = archive.extractfile(members[matrix["filename"]]).read()
    shape = tuple(int(s) for s in matrix["shape"])
    array = np.frombuffer(raw, dtype=np.dtype(matrix["dtype"])).reshape(shape)
    spacing = tuple(float(s) for s in main["spacing"])
    return Volume(array.copy(), spacing, meta={"modality": str(main.get("modality", "CT")), "source": str(path)})


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    volume = read_inv3(Path(argv[0]))
    save_volume(volume, argv[1])
    print(f"{argv[1]}: {volume.shape} voxels, spacing {volume.spacing} mm")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
