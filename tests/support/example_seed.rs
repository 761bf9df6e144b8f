//! The example seed's names (`Seed::example`, `examples/emulator/seed.yaml`) as the end-to-end
//! suites use them, and what they ask of the emulator about them.

use keyless_emulator::EmulatorHandle;

pub const SUB: &str = "3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f";
pub const OAI_PROD: &str = "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/oai-prod";
pub const AIS_DEV: &str = "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-ai-prod/providers/Microsoft.CognitiveServices/accounts/ais-dev";
/// Cognitive Services OpenAI User.
pub const OPENAI_USER: &str = "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd";
pub const ALICE: &str = "82f6c951-ea04-4434-a839-f80b32aa6337";
/// bob's Bicep-made assignment on oai-prod is in the seed: not keyless's.
pub const BOB: &str = "16cb6f20-2462-4c3e-91e6-df2449d889ba";
/// The name of bob's Bicep-made assignment on oai-prod: foreign, undeclared.
pub const BOB_BICEP: &str = "486f9612-51c0-5f11-a5cd-84378ffd1469";
pub const GROUP: &str = "d81d0366-c3d7-4b8d-92f3-1be6d6479d9a";
pub const SUMMARIZER: &str = "95ce509f-d768-4c1d-b9ae-4595afb90593";
pub const SUMMARIZER_ID: &str = "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-summarizer";
pub const SUMMARIZER_CLIENT: &str = "abfae246-2b2d-4cc2-b528-9067a57d93af";
pub const CHAT_BACKEND: &str = "119b5110-65ac-46fc-92d3-7aea0a858ce8";
pub const CHAT_BACKEND_CLIENT: &str = "4b3c0789-1890-448c-aca3-a44e891753f7";
pub const CHAT_BACKEND_ID: &str = "/subscriptions/3f2b8c1e-9d4a-4b7e-8c6f-1a2b3c4d5e6f/resourceGroups/rg-identities/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-chat-backend";
/// The seed's batch-scorer: an app registration (not a managed identity) with no federated
/// credential.
pub const SCORER_APP_ID: &str = "1f314dbd-f47f-4150-ba72-84dd3ee0450a";
pub const SCORER_SP: &str = "6bdcdd12-8bfa-47e7-9b5b-bdef4d370b97";

/// Principal ids holding OpenAI User at `scope` in the emulator, sorted.
pub fn holders(emulator: &EmulatorHandle, scope: &str) -> Vec<String> {
    let mut ids: Vec<String> = emulator
        .role_assignments()
        .into_iter()
        .filter(|a| a.scope.eq_ignore_ascii_case(scope) && a.role_definition_guid == OPENAI_USER)
        .map(|a| a.principal_id)
        .collect();
    ids.sort();
    ids
}
