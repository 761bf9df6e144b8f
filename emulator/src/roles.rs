//! Built-in Azure role definitions by GUID, the same in every tenant (../shared/azure-facts.md
//! §F.1): the ones a seed most often names. The emulator knows more (`state::builtin_role_definitions`).
//!
//! These are Azure's facts, not a client's: the emulator keeps its own copy so that a client
//! with a wrong GUID in its role table is caught by it rather than agreed with.

/// Cognitive Services OpenAI User: call deployments (chat, completions, embeddings, images).
pub const COGNITIVE_SERVICES_OPENAI_USER: &str = "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd";
/// Cognitive Services OpenAI Contributor.
pub const COGNITIVE_SERVICES_OPENAI_CONTRIBUTOR: &str = "a001fd3d-188f-4b5d-821b-7da978bf7442";
/// Cognitive Services User.
pub const COGNITIVE_SERVICES_USER: &str = "a97b65f3-24c7-4388-baec-2e87135dc908";
/// Foundry User (named "Azure AI User" before Azure renamed it; same GUID).
pub const FOUNDRY_USER: &str = "53ca6127-db72-4b80-b1b0-d745d6d5456d";
/// Role Based Access Control Administrator: writes and deletes role assignments, usually under
/// an ABAC condition that limits which roles (facts §F.2).
pub const ROLE_BASED_ACCESS_CONTROL_ADMINISTRATOR: &str = "f58310d9-a9f6-439a-9e8d-f62e7b41a168";
/// Owner.
pub const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
