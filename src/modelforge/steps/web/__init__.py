"""The web toolchain's steps: the MediaPipe .task file of a variant (task) and the static web
bundle with its variants, runtimes and server configs (bundle). The page and layout code they
write lives in modelforge.web."""
