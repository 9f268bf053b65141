//! detris: DETRIS referring image segmentation on libtorch (tch).
