//! Object stores: a local folder, or S3/MinIO.

pub mod local;
pub mod s3;
