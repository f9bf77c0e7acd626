"""An interactive viewer of image + map + target inside the HTML report, working offline.

The viewer is NiiVue as bundled by the `ipyniivue` package (`segxai[viewer]`): its widget script is read from the
installed package and embedded into the page (base64, decoded and imported as a module in the browser; never a
network address), then driven by a minimal stand-in for the Jupyter widget model it expects. The volumes travel
as embedded NIfTI files with the image's affine, so NiiVue shows them in world space in radiological
convention with its own orientation letters. Without ipyniivue there is no viewer and the report keeps its PNGs.
"""
from __future__ import annotations

import base64
import functools
import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np

from segxai.errors import SegxaiError

_SCRIPT = Path("static") / "widget.js"
_HEIGHT_PX = 480
_TARGET_RGB = "green"
_SHOWN = 0.2  # the map is shown where |value| >= this share of its window, so the scan stays readable


@functools.cache
def viewer_script() -> bytes | None:
    """The NiiVue widget script shipped by ipyniivue, or None when ipyniivue is not installed.

    The package is located without importing it (its import pulls in Jupyter widgets).
    """
    spec = importlib.util.find_spec("ipyniivue")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / _SCRIPT
    return path.read_bytes() if path.is_file() else None


def viewer_html(image: np.ndarray, attribution: np.ndarray, *, mask: np.ndarray | None = None,
                affine: np.ndarray | None = None, limit: float | None = None, element_id: str = "viewer") -> str | None:
    """HTML (a canvas and its scripts) showing `image` with `attribution` and the target's outline, or None
    without ipyniivue.

    Args:
        image: the grey volume `(*spatial)` (3D).
        attribution: the signed map, same shape; shown in red (positive) and blue (negative) up to `limit`.
        mask: the target; its surface voxels (the mask less its erosion) are drawn in green, so the map inside
            stays visible.
        affine: voxel -> world (mm) of the volumes (default identity).
        limit: the symmetric window of the map (default its largest |value|).
        element_id: the id of the viewer's container (one per page).
    Returns:
        Trusted markup to insert into the report as is.
    """
    script = viewer_script()
    if script is None:
        return None
    image, attribution = np.asarray(image, np.float32), np.asarray(attribution, np.float32)
    if image.ndim != 3 or attribution.shape != image.shape:
        raise SegxaiError(f"the viewer needs a 3D image and a map of its shape, got {image.shape} and "
                          f"{attribution.shape}")
    affine = np.eye(4) if affine is None else np.asarray(affine, np.float64)
    peak = float(np.abs(attribution).max())
    limit = float(limit) if limit is not None and limit > 0 else max(peak, 1e-12)
    volumes = [
        _volume("image", image, affine, colormap="gray", opacity=1.0),
        _volume("map", attribution, affine, colormap="warm", colormap_negative="winter", opacity=0.6,
                cal_min=_SHOWN * limit, cal_max=limit, cal_min_neg=-limit, cal_max_neg=-_SHOWN * limit),
    ]
    if mask is not None and np.any(mask):
        volumes.append(_volume("target", _surface(np.asarray(mask) > 0).astype(np.uint8), affine,
                               colormap=_TARGET_RGB, opacity=1.0, cal_min=0.5, cal_max=1.0))
    state = {"volumes": volumes, "height": _HEIGHT_PX,
             "opts": {"isRadiologicalConvention": True, "show3Dcrosshair": True, "isColorbar": True,
                      "crosshairWidth": 1, "crosshairColor": [1.0, 1.0, 0.0, 0.5],
                      "backColor": [0, 0, 0, 1]}}
    payload = base64.b64encode(script).decode("ascii")
    return _TEMPLATE.format(id=element_id, height=_HEIGHT_PX, payload=payload, state=json.dumps(state))


def _surface(mask: np.ndarray) -> np.ndarray:
    """The voxels of `mask` with a face-neighbour outside it (the grid's border counts as outside)."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask & ~inner


def _volume(name: str, data: np.ndarray, affine: np.ndarray, **settings: object) -> dict[str, object]:
    """One volume of the widget model: a gzipped NIfTI (base64) plus its display settings."""
    import nibabel as nib

    nifti = gzip.compress(nib.Nifti1Image(data, affine).to_bytes(), compresslevel=6, mtime=0)
    return {"id": name, "name": f"{name}.nii.gz", "data": base64.b64encode(nifti).decode("ascii"),
            "colorbar_visible": name == "map", **settings}


# The stand-in widget model: get/set over a plain object; events, messages and saving do nothing (nothing
# talks back); volumes are sub-models found through widget_manager by id, as the widget script expects.
_TEMPLATE = """<div id="{id}" class="viewer" style="height:{height}px"></div>
<script type="application/octet-stream" id="{id}-script">{payload}</script>
<script type="application/json" id="{id}-state">{state}</script>
<script type="module">
const root = document.getElementById("{id}");
const bytes = text => Uint8Array.from(atob(text), c => c.charCodeAt(0));
class Model {{
  constructor(state, manager) {{ this.state = state; this.widget_manager = manager; }}
  get(key) {{ return this.state[key]; }}
  set(key, value) {{ this.state[key] = value; }}
  on() {{}} off() {{}} save_changes() {{}} send() {{}} send_sync_message() {{ return 0; }}
}}
try {{
  const state = JSON.parse(document.getElementById("{id}-state").textContent);
  const models = new Map();
  const manager = {{ get_model: async id => models.get(id) }};
  const defaults = {{ path: {{}}, paired_img_path: {{}}, paired_img_data: null, url: null, frame_4d: 0,
                     colormap_type: 0, colormap_negative: "", colormap_invert: false, colormap_label: null,
                     modulation_image: null, modulate_alpha: 0, colorbar_visible: false }};
  state.volumes = state.volumes.map(volume => {{
    models.set(volume.id, new Model({{ ...defaults, ...volume, data: bytes(volume.data) }}, manager));
    return "IPY_MODEL_" + volume.id;
  }});
  Object.assign(state, {{ meshes: [], scene: null, graph: null, draw_lut: null, this_model_id: null,
                         background_masks_overlays: 0, draw_opacity: 0.8, draw_fill_overwrites: true,
                         overlay_outline_width: 0, overlay_alpha_shader: 1 }});
  const source = new Blob([bytes(document.getElementById("{id}-script").textContent)], {{ type: "text/javascript" }});
  const widget = (await import(URL.createObjectURL(source))).default;
  const model = new Model(state, manager);
  await widget.initialize({{ model }});
  await widget.render({{ model, el: root }});
  root.dataset.state = "drawn";
}} catch (error) {{
  root.dataset.state = "failed";
  root.textContent = "The interactive viewer could not start: " + error;
  console.error(error);
}}
</script>"""
