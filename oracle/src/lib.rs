//! The HealthSense ward-hub oracle. Not built yet: see the open issue
//! "Ward-hub oracle"; nothing here pretends to work.
