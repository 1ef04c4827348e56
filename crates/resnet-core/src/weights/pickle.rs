//! Restricted unpickler (to be written).
