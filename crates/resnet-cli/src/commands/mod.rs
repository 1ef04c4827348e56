pub mod bench;
pub mod classify;
pub mod convert;
pub mod embed;
pub mod summary;
pub mod weights;
