//! License knowledge: the SPDX license texts (a built-in index and identification of
//! reproduced texts), license markers in generated code (`SPDX-License-Identifier:` lines,
//! copyright notices, license header phrases), and the resolution of each corpus file's license
//! when an index is built.

pub mod identify;
pub mod markers;
pub mod resolve;
pub mod texts;

pub use identify::{Identification, LicenseDb};
