//! The keyless.dev/v1alpha1 API: what users write. No IO.

pub mod roles;

pub use roles::RoleName;

/// Every keyless CRD as YAML documents, in a stable order.
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    Ok(String::new())
}
