"""What `explain --method` accepts: the CAM methods (name -> label and pytorch-grad-cam class)
and the map methods. A plain table with no heavy imports, so the command line can list it.
Adding a CAM method of pytorch-grad-cam is one row here."""

CAM_METHODS: dict[str, tuple[str, str]] = {
    "gradcam": ("Grad-CAM", "GradCAM"),
    "gradcam++": ("Grad-CAM++", "GradCAMPlusPlus"),
    "eigencam": ("EigenCAM", "EigenCAM"),
    "scorecam": ("Score-CAM", "ScoreCAM"),
    "layercam": ("LayerCAM", "LayerCAM"),
    "hirescam": ("HiResCAM", "HiResCAM"),
    "xgradcam": ("XGrad-CAM", "XGradCAM"),
}
MAP_METHODS = ("featuremaps", "attention")
ALL_METHODS = (*CAM_METHODS, *MAP_METHODS)
