// @ensemble/categorizer as a library: the pure fast classifier (for the bench and for anyone
// who wants the decision without a network hop). The service itself starts from main.ts.
export {
  classifyFast,
  extractFeatures,
  score,
  WEIGHTS,
  CATEGORY_OF,
  type CategoryLetter,
  type ClassifierInput,
  type FastDecision,
  type Feature,
  type FeatureName,
  type Features,
} from "./features.js";
