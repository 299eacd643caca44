// Compare: one prompt to several models at once (RunService.Run, COMPARE mode). Answers stream
// side by side; when the run ends each shows its latency, tokens and cost, and the ranking
// (by a judge model or by measurable criteria) comes with its rationale.
import { RankCriterion, type ModelAnswer, type RankingResult, type Run } from "@ensemble/proto";
import { useState } from "react";
import type { FormEvent } from "react";
import { api, errorText } from "../api";
import { loadChatModels } from "../models";
import { ErrorBox, Guard, fmtCached, fmtMs, fmtUsd, useLoad } from "../ui";
import { Link } from "../router";

const CRITERIA: Array<{ value: RankCriterion; label: string }> = [
  { value: RankCriterion.LATENCY, label: "fastest" },
  { value: RankCriterion.COST, label: "cheapest" },
  { value: RankCriterion.TIME_TO_FIRST_TOKEN, label: "first token soonest" },
  { value: RankCriterion.LONGEST, label: "most detailed" },
  { value: RankCriterion.SHORTEST, label: "most concise" },
];

export function ComparePage() {
  const models = useLoad(loadChatModels, []);
  const [picked, setPicked] = useState<string[]>([]);
  const [judge, setJudge] = useState("");
  const [criteria, setCriteria] = useState<RankCriterion[]>([RankCriterion.LATENCY]);
  const [prompt, setPrompt] = useState("");
  const [streams, setStreams] = useState<string[]>([]);
  const [models_, setRunModels] = useState<string[]>([]);
  const [run, setRun] = useState<Run>();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string>();

  const chosen = picked.length > 0 ? picked : (models.data ?? []).slice(0, 3).map((m) => m.id);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (chosen.length < 2) {
      setError("Pick at least two models.");
      return;
    }
    if (judge === "" && criteria.length === 0) {
      setError("Pick a judge model or at least one criterion.");
      return;
    }
    setBusy(true);
    setError(undefined);
    setRun(undefined);
    setRunModels(chosen);
    const texts = chosen.map(() => "");
    setStreams([...texts]);
    try {
      for await (const item of api.runs.run({
        spec: {
          input: prompt,
          mode: {
            case: "compare",
            value: { models: chosen, ranking: { judgeModel: judge, by: criteria } },
          },
        },
      })) {
        if (item.item.case === "event" && item.item.value.payload.case === "stepDelta") {
          const d = item.item.value.payload.value;
          texts[d.answerIndex] = (texts[d.answerIndex] ?? "") + d.text;
          setStreams([...texts]);
        } else if (item.item.case === "run") {
          setRun(item.item.value);
        }
      }
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  };

  const compareStep = run?.steps.find((s) => s.models.length > 1 && s.answers.length > 0);
  const answers: Array<ModelAnswer | undefined> = models_.map((_, i) =>
    compareStep?.answers.find((a) => a.answerIndex === i),
  );
  const ranking: RankingResult | undefined = run?.ranking;

  return (
    <div className="compare">
      <h1>Compare models</h1>
      <form onSubmit={(e) => void submit(e)}>
        <fieldset>
          <legend>Models (2–8)</legend>
          <Guard
            loaded={models}
            empty={(m) => m.length === 0}
            emptyText="No models in the catalog."
          >
            {(list) => (
              <div className="checks">
                {list.map((m) => (
                  <label key={m.id} className="check">
                    <input
                      type="checkbox"
                      name="model"
                      value={m.id}
                      checked={chosen.includes(m.id)}
                      onChange={() =>
                        setPicked(
                          chosen.includes(m.id)
                            ? chosen.filter((x) => x !== m.id)
                            : [...chosen, m.id].slice(0, 8),
                        )
                      }
                    />
                    {m.id}
                  </label>
                ))}
              </div>
            )}
          </Guard>
        </fieldset>
        <fieldset>
          <legend>Ranking</legend>
          <label>
            Judge model
            <select value={judge} onChange={(e) => setJudge(e.target.value)}>
              <option value="">none (rank by the criteria)</option>
              {(models.data ?? []).map((m) => (
                <option key={m.id} value={m.id}>
                  {m.id}
                </option>
              ))}
            </select>
          </label>
          <div className="checks">
            {CRITERIA.map((c) => (
              <label key={c.value} className="check">
                <input
                  type="checkbox"
                  checked={criteria.includes(c.value)}
                  onChange={() =>
                    setCriteria(
                      criteria.includes(c.value)
                        ? criteria.filter((x) => x !== c.value)
                        : [...criteria, c.value],
                    )
                  }
                />
                {c.label}
              </label>
            ))}
          </div>
        </fieldset>
        <label>
          Prompt
          <textarea
            name="prompt"
            rows={3}
            required
            value={prompt}
            onChange={(e) => setPrompt(e.target.value)}
          />
        </label>
        <ErrorBox error={error} />
        <button type="submit" className="primary" disabled={busy || prompt.trim() === ""}>
          {busy ? "Comparing…" : "Compare"}
        </button>
      </form>

      {models_.length > 0 && (
        <div className="columns">
          {models_.map((m, i) => {
            const a = answers[i];
            const rank = ranking?.ranked.find((r) => r.answerIndex === i);
            return (
              <article key={m} className="answer" data-model={m}>
                <h2>
                  {rank !== undefined && <span className="rank">#{rank.rank}</span>} {m}
                </h2>
                <div className="text">{a?.text ?? (streams[i] || (busy ? "…" : ""))}</div>
                {a !== undefined && (
                  <dl className="facts">
                    <dt>latency</dt>
                    <dd>{fmtMs(a.latency)}</dd>
                    <dt>first token</dt>
                    <dd>{fmtMs(a.timeToFirstToken)}</dd>
                    <dt>tokens</dt>
                    <dd>
                      {String(a.usage?.totalTokens ?? 0n)}
                      {fmtCached(a.usage)}
                    </dd>
                    <dt>cost</dt>
                    <dd>{fmtUsd(a.usage?.costUsd)}</dd>
                  </dl>
                )}
                {a?.error !== undefined && <p className="error">{a.error.message}</p>}
                {rank?.rationale !== undefined && rank.rationale !== "" && (
                  <p className="muted">{rank.rationale}</p>
                )}
              </article>
            );
          })}
        </div>
      )}
      {ranking !== undefined && ranking.ranked.length > 0 && (
        <section className="ranking" aria-label="Ranking">
          <h2>Ranking</h2>
          <ol>
            {[...ranking.ranked]
              .sort((x, y) => x.rank - y.rank)
              .map((r) => (
                <li key={r.answerIndex}>
                  {r.model} <span className="muted">score {r.score.toFixed(2)}</span>
                </li>
              ))}
          </ol>
          <p>
            {ranking.judgeModel !== "" ? `Judge: ${ranking.judgeModel}. ` : "By criteria. "}
            {ranking.rationale}
          </p>
        </section>
      )}
      {run?.error !== undefined && (
        <p className="error" role="alert">
          {run.error.explanation || run.error.message}
        </p>
      )}
      {run !== undefined && (
        <p>
          <Link to={`/runs/${run.id}`}>Open this run</Link>
        </p>
      )}
    </div>
  );
}
