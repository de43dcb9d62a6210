// Constants: page sizes, storage keys, texts. The state and code names come from the
// server (names.js, made from its protos), so they are written once.

export { CODE_NAMES, STATES } from "./names.js";

export const PAGE_SIZE = 50;
// How often the schedule pages read their schedules again (nothing streams them).
export const SCHEDULE_REFRESH_MS = 5000;
// What each overlap policy does, in a few words.
export const OVERLAP_TEXT = {
  SKIP: "a fire is skipped while the previous run is not done",
  ALLOW: "every fire starts a run, whatever the previous runs do",
  BUFFER_ONE: "one fire waits for the previous run to end; more are skipped",
  CANCEL_PREVIOUS: "a fire cancels the previous run if it is not done",
};
export const TOKEN_KEY = "oprun.token";
export const TYPE_PREFIX = "type.googleapis.com/";
// Inputs the Submit form starts with, by kind.
export const INPUT_EXAMPLES = { sleep: '{"duration":"10s","steps":10}' };
// Errors after which reopening a stream cannot help.
export const FINAL_STREAM_ERRORS = new Set([
  "INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "PERMISSION_DENIED",
  "FAILED_PRECONDITION", "UNIMPLEMENTED",
]);
