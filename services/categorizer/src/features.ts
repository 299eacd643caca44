// The fast classifier: pure functions from a request's text and attachments to a category, its
// modalities and domain tags, with a confidence and the reasons a person can check.
//
// How it decides (explainable by construction):
//   1. extractFeatures() measures a few dozen named signals (cue words per kind of demand,
//      counts of deliverables and enumerated items, code fences, maths notation, length,
//      question form, attachments ...). Each signal keeps the words that fired it as evidence.
//   2. score() is a linear model: per category, bias + sum(weight x feature value). The weights
//      are hand-set priors in WEIGHTS below (one table, readable, no training run); they were
//      adjusted against the training split of bench/data/categorizer.jsonl only, never the
//      held-out fifth.
//   3. A softmax over the three scores gives probabilities; the winner's probability is the
//      confidence, and the largest positive contributions to the winner are the reasons.
// Modalities are not scored: they are explicit in a request (an attachment, "draw", a code
// fence), so they come from detectors, each with its own reason.
//
// Everything here is synchronous and allocation-light: the bench measures it in microseconds.
import { Category, Modality } from "@ensemble/proto";

export interface ClassifierInput {
  text: string;
  /** MIME types of the attachments ("image/png", "video/mp4", ...). */
  attachmentMimeTypes?: readonly string[];
}

export type CategoryLetter = "L" | "M" | "H";

export const CATEGORY_OF: Record<CategoryLetter, Category> = {
  L: Category.L,
  M: Category.M,
  H: Category.H,
};

/** One measured signal: its value (already scaled to roughly 0..3) and what fired it. */
export interface Feature {
  value: number;
  evidence: string[];
}

export type FeatureName =
  | "deliverables"
  | "enumeration"
  | "listParts"
  | "taskVerbs"
  | "sequencing"
  | "workflowVerbs"
  | "projectScope"
  | "reasoning"
  | "strongReasoning"
  | "math"
  | "constraints"
  | "hardDebugging"
  | "analysisDepth"
  | "simpleAsk"
  | "shortText"
  | "longText"
  | "singleQuestion"
  | "transform"
  | "singleArtifact"
  | "mediaOnly";

export type Features = Record<FeatureName, Feature>;

export interface FastDecision {
  category: CategoryLetter;
  /** Softmax probabilities per category (sum 1). */
  probabilities: Record<CategoryLetter, number>;
  confidence: number;
  modality: Modality;
  /** Every modality the request needs, main first. */
  modalities: Modality[];
  domainTags: string[];
  /** Most important first. */
  reasons: string[];
  /** Words requested explicitly ("in 800 words"), 0 when none. */
  requestedWords: number;
}

// ---------------------------------------------------------------------------------------------
// Signals

/** Deliverables a workflow produces; several in one request is the mark of category H. */
const DELIVERABLES: Array<[string, RegExp]> = [
  ["report", /\breports?\b/],
  [
    "plan",
    /\b(?:business|project|marketing|content|study|lesson|meal|training|launch|test|migration|rollout|action|media|communication)\s+plans?\b/,
  ],
  ["strategy", /\bstrateg(?:y|ies)\b/],
  ["email", /\be-?mails?\b|\bemail sequence\b|\bnewsletters?\b/],
  ["landing page", /\blanding pages?\b/],
  [
    "social posts",
    /\b(?:social(?: media)? posts?|tweets?|linkedin posts?|instagram (?:posts?|captions?)|captions?)\b/,
  ],
  ["blog post", /\bblog posts?\b|\barticles?\b/],
  ["press release", /\bpress releases?\b/],
  ["tagline", /\b(?:taglines?|slogans?|headlines?)\b/],
  ["ad copy", /\bad (?:copy|copies|creatives?)\b|\b(?:ads|adverts)\b/],
  ["website", /\bwebsites?\b|\bweb app\b/],
  ["tests", /\b(?:unit |integration |e2e )?tests?\b(?! (?:it|this|whether))/],
  ["documentation", /\b(?:documentation|docs|readme|user guide|api reference)\b/],
  ["slides", /\b(?:slides?|slide deck|pitch deck|deck|presentation)\b/],
  ["budget", /\bbudgets?\b|\bcost estimates?\b/],
  ["timeline", /\b(?:timelines?|roadmaps?|milestones?|schedule)\b/],
  [
    "curriculum",
    /\b(?:curricul(?:um|a)|syllabus|lesson plans?|quizz?(?:es)?|exercises|worksheets?)\b/,
  ],
  ["proposal", /\b(?:proposals?|whitepapers?|case stud(?:y|ies)|one-pagers?)\b/],
  ["brochure", /\b(?:brochures?|flyers?|one-sheet)\b/],
  ["script", /\b(?:video script|scripts? for|storyboards?)\b/],
  ["faq", /\bfaqs?\b/],
  ["persona", /\b(?:personas?|customer profiles?)\b/],
  [
    "analysis section",
    /\b(?:swot|competitor analysis|competitive analysis|market analysis|risk (?:analysis|assessment|register))\b/,
  ],
  ["executive summary", /\bexecutive summar(?:y|ies)\b/],
  ["schema", /\b(?:database schema|data model|er diagram)\b/],
  [
    "deployment",
    /\b(?:dockerfile|ci(?:\/cd)? pipeline|github actions|deployment (?:config|manifests?)|helm chart)\b/,
  ],
  ["api", /\b(?:rest api|api endpoints?|backend|frontend)\b/],
  [
    "images set",
    /\b(?:visuals|visual assets|set of (?:images|illustrations|icons)|series of (?:images|illustrations))\b/,
  ],
  ["logo", /\blogos?\b/],
  ["palette", /\bcolou?r palettes?\b/],
  ["poster", /\b(?:posters?|banners?|banner art|flyers?|invitations?|menu (?:cards?|design))\b/],
  ["thumbnails", /\bthumbnails\b/],
  ["story", /\b(?:the story|stor(?:y|ies) in \d+|chapters?|chapter outline)\b/],
  ["cover", /\b(?:cover image|cover art|book cover|a cover)\b/],
  [
    "video",
    /\b(?:teaser|trailer|pitch video|promotional video|explainer video|walkthrough video|channel trailer|reels?|clips)\b/,
  ],
  ["script", /\b(?:scripts|treatment|shot list|storyboards?)\b/],
  [
    "design sheet",
    /\b(?:character design|design sheet|merch(?:andise)?|t-shirt graphic|stickers? designs?|sticker designs)\b/,
  ],
  ["screenshots", /\b(?:app store screenshots|store listing)\b/],
  ["course", /\b(?:course outline|lessons?|modules?|episodes?)\b/],
  ["tracker", /\b(?:trackers?|checklists?|templates?|spreadsheets?)\b/],
  ["guide", /\b(?:guides?|guidelines?|runbooks?|playbooks?|handbooks?)\b/],
  ["letter", /\b(?:letters?|query letter|invitation email|announcement)\b/],
  ["calendar", /\b(?:content calendar|posting schedule|calendar|agenda|run of show|itinerary)\b/],
];

const SEQUENCING =
  /\b(?:then|after that|afterwards|finally|next,|followed by|once (?:that|done|finished)|step \d|phase \d|first,|second,|third,|in parallel|as well as|along with|and also|plus)\b/g;
const WORKFLOW_VERBS =
  /\b(?:research|draft|review|revise|iterate|proofread it|fact-check|end[- ]to[- ]end|from scratch|package|kit|deliverables?|multi-part|workstreams?|each of|for each|rollout|go-to-market)\b/g;
const PROJECT_SCOPE =
  /\b(?:campaign|project|launch|full-stack|mvp|complete (?:app|application|site|course|guide|package|system)|whole|entire|comprehensive|in-depth report|onboarding program|course|playbook|handbook|toolkit|starter kit|series|package|(?:build|create|make|set up|develop) (?:a|an|the|our|my) (?:\w+ ){0,3}(?:app|application|bot|tool|service|website|site|platform|extension|microservice|system|pipeline|package|product|course|program|challenge|campaign|kit|identity|setup))\b/g;

/** Imperative task verbs: each distinct one is roughly one step of work. */
const TASK_VERBS =
  /\b(?:research|write|draft|create|design|plan|build|review|produce|prepare|propose|implement|test|document|organi[sz]e|transcribe|extract|compare|develop|set up|generate|define|outline|critique|redesign|add|include|make|put together|launch|deploy|translate|summari[sz]e)\b/g;

/** Cues that on their own mean a proof or derivation is wanted, however short the request. */
const STRONG_REASONING =
  /\b(?:prove|proof|derive|show that|theorem|lemma|rigorous(?:ly)?|counter-?example|by induction|irrational|np-(?:hard|complete)|invariant)\b/g;

const REASONING =
  /\b(?:prove|proof|proven|derive|derivation|show that|why (?:does|do|is|are|would|did|can't|cannot)|justify|rigorous(?:ly)?|formal(?:ly)?|theorem|lemma|invariant|counter-?example|paradox|puzzle|riddle|deduce|infer|step[- ]by[- ]step|think (?:carefully|through)|reason(?:ing)? (?:about|through)|trade-?offs?|implications?|root cause|what would happen if|hypothes(?:is|es|ize)|critique|evaluate whether|is it possible|under what conditions|optimal(?:ly)?|optimi[sz]e|minimi[sz]e|maximi[sz]e|complexity|big-?o|asymptotic|np-(?:hard|complete)|game theory|equilibri(?:um|a)|expected value|bayes(?:ian)?|probability|strategy for (?:the|a) game|correctness|soundness|guarantee|consistency model|linearizab\w*|consensus|ethical dilemma|second-order effects?|generali[sz]e|deduc\w+|forced win|accurate(?:ly)?|physically (?:accurate|correct)|scientifically (?:accurate|correct|rigorous)|reason (?:first|carefully)|check (?:that|whether) .{0,30} holds|no (?:wall )?crossings|solve (?:it|this)|construct (?:one|a schedule|the smallest)|impossible|valid(?:ity)?|sound(?:ness)?)\b/g;
const MATH =
  /\b(?:integral|integrate|derivative|differentiate|equations?|solve for|matri(?:x|ces)|eigen\w*|limit of|converge\w*|diverge\w*|series|primes?|modulo|mod \d|combinatori\w*|permutations?|combinations|how many ways|inequalit(?:y|ies)|geometry|triangle|circle|polynomial|logarithm|vector space|topolog\w*|group theory|induction|recurrence|probabilit\w*|dice|coins?|urn|random variable|variance|distribution)\b/g;
const MATH_SYMBOLS = /[=^√∫∑∏π≤≥≠±∞]|\b\d+\s*[-+*/^]\s*\d+|\b[a-z]\^\d|\bx\s*=|\bf\(x\)|\bn!/g;
const CONSTRAINTS =
  /\b(?:must|without|only (?:if|when|using)|at most|at least|exactly|no more than|no two|given that|assum(?:e|ing)|such that|subject to|constraints?|while keeping|cannot|must not|each (?:person|player|team)|every (?:pair|node|day))\b/g;
const HARD_DEBUGGING =
  /\b(?:race conditions?|deadlocks?|memory leaks?|heisenbugs?|intermittent(?:ly)?|segfaults?|segmentation fault|undefined behaviou?r|data races?|livelock|flaky|corrupt(?:ed|ion)|off-by-one|why (?:does|is) (?:my|this|the) (?:code|function|query|program|test)|concurrency|lock-free|happens-before|memory model|cache (?:invalidation|coherence)|performance regression|n\+1|query plan)\b/g;
const ANALYSIS_DEPTH =
  /\b(?:analy[sz]\w*|evaluat\w*|assess\w*|compare and contrast|pros and cons|which (?:is|would be) better|weigh|nuanced|in depth|deep dive|critically|edge cases|failure modes|attack vectors?|threat model|design (?:a|an) (?:algorithm|protocol|scheme|system)|architecture (?:for|of)|scal(?:e|ing) to)\b/g;

const SIMPLE_ASK =
  /\b(?:what(?:'s| is| are| was| were| does) (?:the |a |an )?|who (?:is|was|wrote|invented|painted)|when (?:is|was|did)|where (?:is|are|can)|define|definition of|meaning of|translate|summari[sz]e|tl;?dr|rewrite|rephrase|paraphrase|proofread|fix (?:the |my )?(?:grammar|typos?|spelling)|shorten|convert|format|give me (?:a|an|some|\d)|list (?:a few|some|\d|three|five)|suggest|recommend|name (?:a|some|three|five)|tell me|how do (?:i|you)|how to|quick(?:ly)?|briefly|in (?:one|two|three) (?:sentences?|lines?|words?|paragraphs?)|example of|synonyms?|antonyms?|spell|capital of|hello|hi there|thanks|thank you|explain (?:what|how)|what does .{1,40} mean|how (?:much|many|long|far|old|tall) (?:is|are|does|do)|remind me)\b/g;
const TRANSFORM =
  /\b(?:translate|rewrite|rephrase|paraphrase|proofread|summari[sz]e|shorten|convert|reformat|format (?:this|it|as)|make (?:it|this) (?:more|less|shorter|longer|formal|casual|friendly)|correct (?:this|my)|turn (?:this|it) into|extract)\b/g;
/** A single thing to produce ("write a haiku", "a function that ..."): pulls toward M. */
const SINGLE_ARTIFACT =
  /\b(?:write|give me|draft|compose|create|make|generate|draw|paint|design|produce|render) (?:me )?(?:a|an|one|the)\s+(?:(?:short|quick|simple|small|brief|single|funny|catchy|polite|formal|friendly|new|little|nice)\s+)?(?:haiku|poem|limerick|joke|tweet|caption|title|subject line|sentence|paragraph|function|method|regex|query|one-liner|snippet|class|script|email|reply|message|note|bio|slogan|image|picture|photo|illustration|logo|icon|drawing|painting|portrait|wallpaper|poster|sticker|avatar|banner|thumbnail|video|clip|animation|gif|cover|meme|toast|recipe|definition|summary|list|table)\b/g;

// Modality detectors.
const GEN_VERB =
  "(?:generate|create|make|draw|paint|design|render|illustrate|sketch|produce|give me|show me|visuali[sz]e|animate|film|shoot|edit)";
const IMAGE_NOUN =
  "(?:image|images|picture|pictures|illustration|illustrations|drawing|logo|logos|icon|icons|poster|wallpaper|artwork|art|portrait|photo|photos|photograph|banner|thumbnail|sticker|cartoon|painting|render|mockup|avatar|comic|infographic|emoji|mascot|album cover|book cover|concept art|pixel art|watercolou?r|sketch)";
const IMAGE_GEN = new RegExp(
  `\\b${GEN_VERB}\\b[^.?!\\n]{0,60}?\\b${IMAGE_NOUN}\\b|\\b(?:text-to-image|image generation|midjourney|dall-?e|stable diffusion|photorealistic|in the style of|digital art|4k render|oil painting of|watercolou?r (?:painting )?of)\\b`,
  "i",
);
const VIDEO_NOUN =
  "(?:video|videos|clip|clips|animation|animated|footage|short film|trailer|timelapse|time-lapse|reel|reels|gif|cinematic|b-roll|music video|explainer video)";
const VIDEO_GEN = new RegExp(
  `\\b${GEN_VERB}\\b[^.?!\\n]{0,60}?\\b${VIDEO_NOUN}\\b|\\b(?:text-to-video|image-to-video|video generation|veo|sora|(?:trailer|teaser|pitch|promotional|explainer|walkthrough|launch|product) videos?)\\b|\\b(?:an?|short|\\d+[- ]second)\\s+(?:\\w+\\s+){0,3}${VIDEO_NOUN}\\b(?:[^.?!\\n]{0,40})\\b(?:of|showing|where|in which|that shows)\\b`,
  "i",
);
// "the plot" of a novel is not an image: ambiguous nouns need a pointing word.
const IMAGE_REFERENCE =
  /\b(?:this|attached|above|uploaded|these)\s+(?:image|images|photo|photos|picture|pictures|screenshot|screenshots|scan|chart|graph|diagram|figure|x-ray|receipt|whiteboard|handwriting|meme|drawing|plot)\b|\b(?:the|my)\s+(?:image|photo|picture|screenshot|x-ray|receipt)\b|\bin the (?:image|photo|picture|screenshot)\b|\bwhat(?:'s| is) in (?:this|the) (?:image|photo|picture)\b/i;
const CODE_FENCE = /```/g;
const CODE_TOKENS =
  /(?:=>|\bdef \w+\(|\bfunction\s*\w*\(|\bclass \w+[:{(]|\breturn\b[^.\n]{0,40};|#include\b|\bimport \w+|\bconsole\.log\b|\bprint\(|\bSELECT\b[\s\S]{0,80}\bFROM\b|\bpublic static\b|\bfn \w+\(|\bfunc \w+\(|\bconst \w+ =|\blet \w+ =|\bvar \w+ =|[{};]\s*\n|\w+\(\)\s*[{;]|Traceback \(most recent call last\)|\bat \w+\.\w+ \(|Exception in thread|TypeError:|ReferenceError:|SyntaxError:|NullPointerException)/g;
/** Words that by themselves mean code (languages, tools, code artefacts). */
const CODE_WORDS_STRONG =
  /\b(?:python|javascript|typescript|java|kotlin|swift|rust|golang|go code|c\+\+|c#|ruby|php|scala|haskell|elixir|sql|postgres(?:ql)?|mysql|sqlite|redis|kafka|spark|airflow|elasticsearch|bash|shell script|powershell|regex|regular expression|html|css|tailwind|react|jsx|vue|angular|svelte|node(?:\.js)?|express|django|flask|fastapi|spring boot|kubernetes|k8s|docker(?:file|-compose)?|terraform|graphql|rest api|compiler|refactor\w*|unit tests?|pytest|jest|vitest|stack trace|compile[sd]?|runtime error|algorithms?|data structure|linked list|binary (?:tree|search)|hash ?map|recursion|recursive|git|pull request|code review|codebase|repo(?:sitory)?|npm|pip|cargo|webpack|vite|linter|goroutines?|mutex|makefile|cmake|leetcode|monorepo|chrome extension|cli tool|one-liner|list comprehension|type hints?|interface for|memoi[sz]ation|lock-free|cas|deadlock|segfault|api endpoints?|backend|frontend|microservices?)\b/g;
/** Words that hint at code but also appear elsewhere ("class", "script", "thread"). */
const CODE_WORDS_WEAK =
  /\b(?:function|method|class|module|library|script|api|endpoint|bug|debug|thread|async|await|promise|cron job|json|yaml|bot|app|cache|query|schema)\b/g;
const INLINE_CODE = /`[^`\n]{1,80}`/g;

const DOMAIN_TAGS: Array<[string, RegExp]> = [
  [
    "math",
    /\b(?:math|maths|mathematics|algebra|calculus|geometry|theorem|proof|integral|derivative|equation|probability|statistics|combinatorics|matrix|eigen\w*|prime|polynomial|number theory|topology)\b/,
  ],
  [
    "science",
    /\b(?:physics|chemistry|biology|quantum|molecule|atom|photosynthesis|evolution|gravity|thermodynamics|relativity|climate|ecosystem|genetics|dna|protein|astronomy|orbit|neuroscience)\b/,
  ],
  [
    "legal",
    /\b(?:legal|law|lawyer|contract|clause|gdpr|liability|lawsuit|court|statute|copyright|trademark|patent|compliance|regulation|terms of service|nda|tenant rights|lease)\b/,
  ],
  [
    "medical",
    /\b(?:medical|medicine|doctor|symptoms?|diagnos\w+|disease|drug|dosage|patient|clinical|health|therapy|vaccine|nutrition|diet|x-ray|mri|blood pressure|diabetes)\b/,
  ],
  [
    "finance",
    /\b(?:finance|financial|invest\w*|stocks?|bonds?|portfolio|interest rate|mortgage|loan|tax(?:es)?|budget|revenue|profit|cash flow|valuation|accounting|inflation|crypto\w*|bitcoin|retirement|401k|pricing)\b/,
  ],
  [
    "marketing",
    /\b(?:marketing|campaign|brand(?:ing)?|advertis\w+|ads?|seo|social media|newsletter|audience|customers?|launch|promo\w*|slogan|tagline|copywriting|conversion|funnel|influencer|go-to-market|landing page)\b/,
  ],
  [
    "writing",
    /\b(?:essay|story|poem|haiku|limerick|novel|fiction|blog|article|copy|prose|narrative|screenplay|lyrics|write-?up|speech|toast|letter|cover letter)\b/,
  ],
  [
    "education",
    /\b(?:teach\w*|students?|lesson|curricul\w+|syllabus|course|classroom|quiz\w*|homework|exam|tutor\w*|learning objectives|school|university)\b/,
  ],
  [
    "travel",
    /\b(?:travel|trip|itinerary|flight|hotel|vacation|holiday|tourist|visa|backpacking)\b/,
  ],
  [
    "data",
    /\b(?:data ?set|dataframe|pandas|csv|spreadsheet|excel|dashboard|analytics|sql|query|etl|data pipeline|machine learning|regression|classifier|neural network|model training)\b/,
  ],
  [
    "business",
    /\b(?:business|startup|company|management|strategy|stakeholders?|okrs?|kpis?|hiring|sales|product manager|roadmap|operations|supply chain|negotiation)\b/,
  ],
  [
    "design",
    /\b(?:design|ui|ux|logo|typography|colou?r palette|layout|wireframe|mockup|figma|branding|illustration)\b/,
  ],
  [
    "history",
    /\b(?:history|historical|war|empire|revolution|ancient|medieval|century|dynasty|treaty)\b/,
  ],
  [
    "security",
    /\b(?:security|vulnerab\w+|exploit|xss|csrf|sql injection|encryption|authentication|oauth|jwt|threat model|penetration|malware|phishing|zero-day)\b/,
  ],
  [
    "devops",
    /\b(?:kubernetes|k8s|docker|terraform|ci\/cd|pipeline|deploy\w*|helm|aws|gcp|azure|infrastructure|observability|prometheus|nginx)\b/,
  ],
  [
    "food",
    /\b(?:recipe|cook\w*|bake|baking|dinner|lunch|breakfast|ingredients?|vegan|vegetarian|meal)\b/,
  ],
];

// ---------------------------------------------------------------------------------------------
// Weights: per category, bias and weight per feature. Read a row as "each unit of this signal
// moves the request this much toward the category". Zero weights are left out.

type WeightRow = Partial<Record<FeatureName, number>> & { bias: number };

export const WEIGHTS: Record<CategoryLetter, WeightRow> = {
  L: {
    bias: 0,
    reasoning: 1.1,
    strongReasoning: 1.0,
    math: 0.9,
    constraints: 0.35,
    hardDebugging: 1.3,
    analysisDepth: 0.55,
    longText: 0.2,
    mediaOnly: -0.4,
  },
  M: {
    bias: 0.8,
    simpleAsk: 0.9,
    shortText: 0.9,
    singleQuestion: 0.5,
    transform: 0.9,
    singleArtifact: 1.0,
    mediaOnly: 0.5,
  },
  H: {
    bias: -0.6,
    deliverables: 1.15,
    enumeration: 0.35,
    listParts: 0.5,
    taskVerbs: 0.45,
    sequencing: 0.45,
    workflowVerbs: 0.55,
    projectScope: 0.8,
    longText: 0.35,
  },
};

/** What a feature's evidence reads like in a reason line. */
const FEATURE_LABEL: Record<FeatureName, string> = {
  deliverables: "several deliverables requested",
  enumeration: "an enumerated list of parts",
  listParts: "several things asked for in one breath",
  taskVerbs: "several tasks",
  sequencing: "steps in sequence",
  workflowVerbs: "workflow verbs",
  projectScope: "project-sized scope",
  reasoning: "reasoning cues",
  strongReasoning: "a proof or derivation asked for",
  math: "maths",
  constraints: "explicit constraints",
  hardDebugging: "hard debugging signals",
  analysisDepth: "analysis depth",
  simpleAsk: "a simple ask",
  shortText: "a short request",
  longText: "a long request",
  singleQuestion: "a single direct question",
  transform: "a transformation of given text",
  singleArtifact: "one artefact to produce",
  mediaOnly: "a single media generation",
};

/** Softmax temperature: higher spreads the probabilities (lower confidence). */
const TEMPERATURE = 1.0;
/** Text beyond this is not scanned for cues (its length still counts): keeps long inputs O(1). */
const SCAN_LIMIT = 16_000;

// ---------------------------------------------------------------------------------------------

function matches(re: RegExp, text: string): string[] {
  re.lastIndex = 0;
  const out: string[] = [];
  for (const m of text.matchAll(re)) {
    out.push(m[0].trim());
    if (out.length >= 12) break;
  }
  return out;
}

function distinct(words: string[]): string[] {
  return [...new Set(words.map((w) => w.toLowerCase()))];
}

/** Saturating count: 0, 1, then slower growth up to `cap`. */
function sat(n: number, cap: number): number {
  return Math.min(n, cap);
}

function feature(value: number, evidence: string[] = []): Feature {
  return { value, evidence };
}

export interface Detected {
  features: Features;
  modalities: Modality[];
  modalityReasons: string[];
  domainTags: string[];
  requestedWords: number;
}

/** Measures every signal of the request. Pure. */
export function extractFeatures(input: ClassifierInput): Detected {
  const raw = input.text.length > SCAN_LIMIT ? input.text.slice(0, SCAN_LIMIT) : input.text;
  const text = raw.toLowerCase();
  const words = input.text.length / 5.5; // an estimate is enough for the length signals
  const mimes = input.attachmentMimeTypes ?? [];

  // ---- modalities
  const modalities: Modality[] = [];
  const modalityReasons: string[] = [];
  const images = mimes.filter((m) => m.toLowerCase().startsWith("image/")).length;
  const videos = mimes.filter((m) => m.toLowerCase().startsWith("video/")).length;
  const videoGen = VIDEO_GEN.exec(raw);
  const imageGen = IMAGE_GEN.exec(raw);
  const imageRef = IMAGE_REFERENCE.exec(raw);
  const fences = matches(CODE_FENCE, raw).length / 2;
  const codeTokens = matches(CODE_TOKENS, raw);
  const codeWords = distinct(matches(CODE_WORDS_STRONG, text));
  const weakCode = distinct(matches(CODE_WORDS_WEAK, text));
  const inlineCode = matches(INLINE_CODE, raw).length;
  if (videoGen !== null) {
    modalities.push(Modality.VIDEO);
    modalityReasons.push(`asks for a video ("${videoGen[0].trim().slice(0, 60)}")`);
  }
  if (imageGen !== null && videoGen === null) {
    modalities.push(Modality.IMAGE_GENERATION);
    modalityReasons.push(`asks for an image ("${imageGen[0].trim().slice(0, 60)}")`);
  }
  if (images > 0 || videos > 0 || (imageRef !== null && videoGen === null && imageGen === null)) {
    modalities.push(Modality.IMAGE_INPUT);
    modalityReasons.push(
      images > 0
        ? `${images} image attachment${images > 1 ? "s" : ""}`
        : videos > 0
          ? `${videos} video attachment${videos > 1 ? "s" : ""}, read as frames by a vision model`
          : `refers to an image ("${imageRef?.[0] ?? ""}")`,
    );
  }
  const codeScore =
    fences * 3 + codeTokens.length + inlineCode + codeWords.length * 1.5 + weakCode.length * 0.5;
  if (codeScore >= 1.5) {
    modalities.push(Modality.CODE);
    modalityReasons.push(
      fences > 0
        ? `${Math.ceil(fences)} code block${fences > 1 ? "s" : ""}`
        : `code cues: ${[...codeWords, ...codeTokens].slice(0, 4).join(", ")}`,
    );
  }
  if (modalities.length === 0) modalities.push(Modality.TEXT);

  // ---- category signals
  const deliverables: string[] = [];
  for (const [name, re] of DELIVERABLES) if (re.test(text)) deliverables.push(name);
  const listLines = raw.split("\n").filter((l) => /^\s*(?:\d+[.)]|[-*•]|[a-z][.)])\s+\S/i.test(l));
  const inlineList = /\b\w+(?: \w+){0,3}, \w+(?: \w+){0,3},? and \w+/.test(text) ? 1 : 0;
  const sequencing = distinct(matches(SEQUENCING, text));
  const workflow = distinct(matches(WORKFLOW_VERBS, text));
  const scope = distinct(matches(PROJECT_SCOPE, text));
  const reasoning = distinct(matches(REASONING, text));
  const strongReasoning = distinct(matches(STRONG_REASONING, text));
  const math = distinct(matches(MATH, text));
  const mathSymbols = matches(MATH_SYMBOLS, raw).length;
  const constraints = distinct(matches(CONSTRAINTS, text));
  const debugging = distinct(matches(HARD_DEBUGGING, text));
  const depth = distinct(matches(ANALYSIS_DEPTH, text));
  // Question openers count in the first sentence only: "where is ..." deep inside an analysis
  // request is not a simple ask.
  const firstSentence = /^[^.?!\n]*[.?!]?/.exec(text)?.[0] ?? text;
  const simple = distinct(matches(SIMPLE_ASK, firstSentence));
  const taskVerbs = distinct(matches(TASK_VERBS, text));
  // The longest run of short comma/"and"-separated parts in one sentence ("a logo, a palette,
  // three banners and a menu"): how many things are asked for, whatever they are called.
  let listParts = 0;
  for (const sentence of text.split(/[.?!:;\n]+/)) {
    const parts = sentence.split(/,|\band\b|\bplus\b/).filter((p) => p.trim().length > 0);
    if (parts.length >= 3 && parts.every((p) => p.trim().split(/\s+/).length <= 9)) {
      listParts = Math.max(listParts, parts.length);
    }
  }
  const transform = distinct(matches(TRANSFORM, text));
  const single = distinct(matches(SINGLE_ARTIFACT, text));
  const sentences = raw.split(/[.?!]+(?:\s|$)/).filter((s) => s.trim().length > 0).length;
  const questionMarks = (raw.match(/\?/g) ?? []).length;
  const media = modalities.some((m) => m === Modality.IMAGE_GENERATION || m === Modality.VIDEO);

  const requestedWords = (() => {
    const m = /\b(\d{2,5})[- ]?(?:words?|word-)\b/.exec(text.replace(/,(?=\d{3}\b)/g, ""));
    return m?.[1] !== undefined ? Number(m[1]) : 0;
  })();

  const features: Features = {
    deliverables: feature(sat(Math.max(0, deliverables.length - 1), 4), deliverables),
    enumeration: feature(
      listLines.length >= 3 ? sat(listLines.length, 8) / 2 : inlineList,
      listLines.length >= 3
        ? [`${listLines.length} list items`]
        : inlineList
          ? ["an inline list"]
          : [],
    ),
    listParts: feature(
      listParts >= 3 ? sat(listParts - 2, 4) : 0,
      listParts >= 3 ? [`${listParts} parts listed`] : [],
    ),
    taskVerbs: feature(taskVerbs.length >= 3 ? sat(taskVerbs.length - 2, 4) : 0, taskVerbs),
    sequencing: feature(sat(sequencing.length, 4), sequencing),
    workflowVerbs: feature(sat(workflow.length, 3), workflow),
    projectScope: feature(sat(scope.length, 2), scope),
    reasoning: feature(sat(reasoning.length, 4), reasoning),
    strongReasoning: feature(sat(strongReasoning.length, 2), strongReasoning),
    math: feature(sat(math.length + (mathSymbols >= 2 ? 1 : 0) + (mathSymbols >= 5 ? 1 : 0), 4), [
      ...math,
      ...(mathSymbols >= 2 ? ["maths notation"] : []),
    ]),
    constraints: feature(sat(constraints.length, 5), constraints),
    hardDebugging: feature(sat(debugging.length, 3), debugging),
    analysisDepth: feature(sat(depth.length, 3), depth),
    simpleAsk: feature(sat(simple.length, 2), simple),
    shortText: feature(words < 14 ? 1 : words < 28 ? 0.5 : 0, words < 28 ? ["a few words"] : []),
    longText: feature(words > 120 ? Math.min(2, Math.log2(words / 120) + 1) : 0, [
      `about ${Math.round(words)} words`,
    ]),
    singleQuestion: feature(
      questionMarks === 1 && sentences <= 2 ? 1 : 0,
      questionMarks === 1 ? ["one question"] : [],
    ),
    transform: feature(sat(transform.length, 2), transform),
    singleArtifact: feature(sat(single.length, 2), single),
    mediaOnly: feature(
      media && deliverables.length <= 1 && listParts < 3 && taskVerbs.length <= 2 ? 1 : 0,
      media ? ["one image or video"] : [],
    ),
  };

  // ---- domain tags
  const domainTags: string[] = [];
  if (modalities.includes(Modality.CODE)) domainTags.push("code");
  for (const [tag, re] of DOMAIN_TAGS) if (re.test(text)) domainTags.push(tag);
  if (modalities.includes(Modality.IMAGE_GENERATION) && !domainTags.includes("design"))
    domainTags.push("design");
  if (videos > 0 || modalities.includes(Modality.VIDEO)) domainTags.push("video");

  return { features, modalities, modalityReasons, domainTags, requestedWords };
}

export interface Scored {
  scores: Record<CategoryLetter, number>;
  probabilities: Record<CategoryLetter, number>;
  contributions: Record<CategoryLetter, Array<{ feature: FeatureName; value: number }>>;
}

/** The linear model and its softmax. Pure. */
export function score(features: Features): Scored {
  const letters: CategoryLetter[] = ["L", "M", "H"];
  const scores = { L: 0, M: 0, H: 0 };
  const contributions: Scored["contributions"] = { L: [], M: [], H: [] };
  for (const c of letters) {
    const row = WEIGHTS[c];
    let s = row.bias;
    for (const [name, f] of Object.entries(features) as Array<[FeatureName, Feature]>) {
      const w = row[name];
      if (w === undefined || f.value === 0) continue;
      const v = w * f.value;
      s += v;
      contributions[c].push({ feature: name, value: v });
    }
    scores[c] = s;
    contributions[c].sort((a, b) => b.value - a.value);
  }
  const max = Math.max(scores.L, scores.M, scores.H);
  const e = {
    L: Math.exp((scores.L - max) / TEMPERATURE),
    M: Math.exp((scores.M - max) / TEMPERATURE),
    H: Math.exp((scores.H - max) / TEMPERATURE),
  };
  const sum = e.L + e.M + e.H;
  return {
    scores,
    probabilities: { L: e.L / sum, M: e.M / sum, H: e.H / sum },
    contributions,
  };
}

const CATEGORY_NAME: Record<CategoryLetter, string> = {
  L: "L (deep reasoning)",
  M: "M (simple or medium)",
  H: "H (several deliverables or steps)",
};

/** The fast classifier: features, scores, decision and reasons. Pure and synchronous. */
export function classifyFast(input: ClassifierInput): FastDecision {
  const detected = extractFeatures(input);
  const scored = score(detected.features);
  const { probabilities } = scored;
  // Ties go to M, then L: the cheaper mistake.
  const category: CategoryLetter =
    probabilities.M >= probabilities.L && probabilities.M >= probabilities.H
      ? "M"
      : probabilities.L >= probabilities.H
        ? "L"
        : "H";
  const confidence = probabilities[category];

  const because = scored.contributions[category]
    .filter((c) => c.value > 0.2)
    .slice(0, 3)
    .map((c) => {
      const f = detected.features[c.feature];
      const ev = f.evidence.slice(0, 4).join(", ");
      return ev === "" ? FEATURE_LABEL[c.feature] : `${FEATURE_LABEL[c.feature]} (${ev})`;
    });
  const reasons = [
    `category ${CATEGORY_NAME[category]} with p=${confidence.toFixed(2)}${
      because.length > 0 ? `: ${because.join("; ")}` : ": no strong signal, the prior applies"
    }`,
    ...detected.modalityReasons.map((r) => `modality: ${r}`),
  ];
  return {
    category,
    probabilities,
    confidence,
    modality: detected.modalities[0] ?? Modality.TEXT,
    modalities: detected.modalities,
    domainTags: detected.domainTags,
    reasons,
    requestedWords: detected.requestedWords,
  };
}
