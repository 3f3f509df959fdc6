"""The `cvdm-tf` command line (click)."""
