//! Image decoding and torchvision-equal preprocessing (to be written).
