package main

import (
	"encoding/json"
	"os"
)

// historyDump is a run's whole history as JSON (history.json in the run
// directory when the run failed or -keep was given): -check-history
// checks it again without running anything, e.g. after changing the model.
type historyDump struct {
	Backend   string        `json:"backend"`
	Instances int           `json:"instances"`
	Keys      []string      `json:"keys"`
	FinalRev  int64         `json:"final_revision"`
	Final     []kv          `json:"final"`
	Faults    []faultRecord `json:"faults"`
	Records   []*record     `json:"records"`
	Watchers  []dumpWatcher `json:"watchers"`
}

type dumpWatcher struct {
	ID      int          `json:"id"`
	LastRev int64        `json:"last_revision"`
	Starts  []watchStart `json:"starts"`
	Errors  []string     `json:"errors,omitempty"`
	Events  []watchEvent `json:"events"`
}

func writeHistory(path, backend string, instances int, h *history, final []kv) error {
	d := historyDump{Backend: backend, Instances: instances, Keys: h.keys, FinalRev: h.finalRev, Final: final, Faults: h.faults, Records: h.records}
	for _, w := range h.watchers {
		d.Watchers = append(d.Watchers, dumpWatcher{ID: w.id, LastRev: w.lastRev, Starts: w.starts, Errors: w.errors, Events: w.events})
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return json.NewEncoder(f).Encode(&d)
}

func readHistory(path string) (*historyDump, *history, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var d historyDump
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, nil, err
	}
	h := &history{keys: d.Keys, records: d.Records, faults: d.Faults, finalRev: d.FinalRev}
	for _, dw := range d.Watchers {
		h.watchers = append(h.watchers, &watcher{id: dw.ID, lastRev: dw.LastRev, starts: dw.Starts, errors: dw.Errors, events: dw.Events})
	}
	return &d, h, nil
}
