"""Read and write images together with their geometry, and write outputs without ever losing inputs.

Every reader returns an `Image`: a channels-first float32 array plus the voxel->world affine, so explanations
computed on it can be saved back on the same grid. Writes are atomic (temp file then `os.replace`), so an
interrupted run never leaves a half-written file or clobbers a good one.
"""
from segxai.atomic import atomic_write
from segxai.io.image import AFFINE_TOLERANCE_MM, LABEL_TOLERANCE, Image, PathLike
from segxai.io.read import load_image, load_mask
from segxai.io.write import check_output_file, prepare_output_dir, save_array

__all__ = [
    "AFFINE_TOLERANCE_MM", "LABEL_TOLERANCE", "Image", "PathLike", "atomic_write", "load_image", "load_mask",
    "check_output_file", "prepare_output_dir", "save_array",
]
