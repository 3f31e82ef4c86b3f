//! Verbatim: notices, while an LLM response streams, that the model is reproducing a protected
//! work, and says which one, under which license, at which span.
//!
//! Data flows one way: [`normalize`] turns text into units, [`index`] holds fingerprints of
//! protected works, [`matcher`] finds runs of output units that occur in an indexed work. The
//! core is sans-IO: nothing here opens sockets; the index is read through memory maps.

#[cfg(not(target_endian = "little"))]
compile_error!(
    "the index format is little-endian and read in place; big-endian hosts are not supported"
);

pub mod audit;
pub mod corpus;
pub mod diag;
pub mod hash;
pub mod index;
pub mod license;
pub mod matcher;
pub mod normalize;
pub mod policy;
pub mod procstat;
pub mod proxy;
pub mod report;
