pub mod bench;
pub mod classify;
pub mod convert;
pub mod embed;
pub mod eval;
pub mod summary;
pub mod train;
pub mod weights;
