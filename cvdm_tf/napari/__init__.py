"""napari plugin (npe2 manifest `napari.yaml`): the Reconstruct dock widget (`widget.py`), a reader for the
outputs of `cvdm-tf infer` (`reader.py`) and the conversions between layers and the task's arrays (`layers.py`).

Install with `pip install "cvdm-tf[napari]"` (or `pip install -e ".[napari]"`); napari finds it through the
`napari.manifest` entry point. Importing this package needs no Qt: the widget module imports it.
"""
