package io.qkern.dist;

import java.util.Collections;
import java.util.Map;
import java.util.TreeMap;

/**
 * Thrown by {@link DeviceMesh#run} when any rank's body failed: {@link #failures()} has every
 * rank's exception; the cause is the first failure that was not merely a consequence of another
 * rank's (an {@link CommunicatorException.Kind#ABORTED} raised because the group was aborted).
 */
public final class RankFailureException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    private final transient Map<Integer, Throwable> failures;

    RankFailureException(Map<Integer, Throwable> failures, int rootRank) {
        super(message(failures, rootRank), failures.get(rootRank));
        this.failures = Collections.unmodifiableMap(new TreeMap<>(failures));
    }

    /** Rank -> what it threw. */
    public Map<Integer, Throwable> failures() {
        return failures;
    }

    private static String message(Map<Integer, Throwable> failures, int rootRank) {
        StringBuilder sb = new StringBuilder("rank ").append(rootRank).append(" failed: ")
                .append(failures.get(rootRank));
        if (failures.size() > 1) {
            sb.append(" (").append(failures.size()).append(" of the ranks failed: ")
                    .append(new TreeMap<>(failures).keySet()).append(')');
        }
        return sb.toString();
    }
}
